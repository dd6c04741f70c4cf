"""docs/models.md's models table: python scripts/models_table.py [os=16] [size=512] [rounds=3]."""

import json
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from seg.benchmark.models import markdown, model_rows
from seg.config import check_output_stride, overwrite_flag, to_plain
from seg.engine.device import size_cpu_threads
from seg.errors import exit_on_user_error
from seg.outputs import check_outputs
from seg.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="models_table")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    cfg = to_plain(cfg)
    check_output_stride(cfg["os"])
    output = Path(HydraConfig.get().runtime.output_dir) / cfg["output"]
    check_outputs([output], {}, "models table", overwrite_flag(cfg))
    torch.set_num_threads(cfg["cpu_threads"] or size_cpu_threads(0))
    rows = model_rows(cfg["os"], cfg["size"], cfg["rounds"], cfg["warmup"], cfg["timm"], cfg["models"])
    print(markdown(rows, cfg["size"], f"CPU ({torch.get_num_threads()} threads)"))
    output.write_text(json.dumps(rows, indent=2) + "\n")
    print(OmegaConf.to_yaml({"written": cfg["output"]}).strip())


if __name__ == "__main__":
    check_overrides(__file__, "models_table")
    main()
