"""Command-line overrides checked before Hydra runs a script: a key the config does not have (a typo such as
``backbne=resnet50`` or ``train.lrr=0.01``) is one line naming it and the keys it is close to. Hydra would print
four lines ending in ``To append to your config use +backbne=resnet50``, advice that adds the misspelt key and
leaves the intended one at its default.

Anything else (a valid command, a sweep, a missing config group option, Hydra's own flags) is left to Hydra.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import List, Optional, Sequence


def unknown_key(config_dir: Path, config_name: str, overrides: Sequence[str]) -> Optional[str]:
    """The one-line message for the first override whose key the composed config lacks, or None."""
    if any(arg.startswith("-") for arg in overrides):  # --multirun, --cfg, --config-name, ...: Hydra's own
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        try:
            compose(config_name=config_name, overrides=list(overrides))
            return None
        except ConfigCompositionException as error:
            cause = error.__cause__
            if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not getattr(cause, "full_key", None):
                return None
            key = cause.full_key
        except Exception:  # a malformed override, a missing group option, ...: Hydra words its own error
            return None
        given = [arg for arg in overrides if arg.partition("=")[0] == key]
        try:
            config = compose(config_name=config_name, overrides=[arg for arg in overrides if arg not in given])
        except Exception:
            return None
    known = _keys(OmegaConf.to_container(config, resolve=False))
    siblings = [name for name in known if name.count(".") == key.count(".")]  # train.lrr: train.lr, not train
    close = difflib.get_close_matches(key, siblings, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "see the keys with --cfg job"
    return (f"unknown key {key!r} in {given[0] if given else key!r} ({hint}); +{key}=... adds a key the config "
            "does not have")


def _keys(section, prefix: str = "") -> List[str]:
    keys = []
    if isinstance(section, dict):
        for name, value in section.items():
            keys.append(f"{prefix}{name}")
            keys.extend(_keys(value, f"{prefix}{name}."))
    return keys


def check_overrides(script: str, config_name: str) -> None:
    """For a script's ``__main__``: exit with ``error: <line>`` (code 1) when a command-line key is unknown to
    ``configs/<config_name>.yaml`` beside the script's folder."""
    message = unknown_key(Path(script).resolve().parent.parent / "configs", config_name, sys.argv[1:])
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
