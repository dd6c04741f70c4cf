"""Write Pascal Context's masks and split lists from the official trainval_merged.json (no Detail API needed).

    python scripts/prepare_pascal_context.py --json /data/VOCdevkit/VOC2010/trainval_merged.json --voc /data

--json: trainval_merged.json (https://codalabuser.blob.core.windows.net/public/trainval_merged.json).
--voc: the folder that holds VOCdevkit/ (or VOCdevkit/VOC2010 itself), with VOC 2010's JPEGImages/.
Writes VOC2010/SegmentationClassContext/<id>.png (0 = background, 1..59) and
VOC2010/ImageSets/SegmentationContext/{train,val}.txt as mmsegmentation's converter does. See docs/datasets.md.
"""

import argparse
import sys

from seg.data.pascal_context_json import prepare_pascal_context
from seg.errors import UserError

STANDARD_COUNTS = {"train": 4996, "val": 5104}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="trainval_merged.json")
    parser.add_argument("--voc", required=True, help="folder that holds VOCdevkit/")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing split lists and masks (never the inputs)")
    args = parser.parse_args()
    try:
        counts = prepare_pascal_context(args.json, args.voc, overwrite=args.overwrite)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for phase, count in counts.items():
        standard = STANDARD_COUNTS[phase]
        print(f"{phase}: {count} images" + ("" if count == standard else f" (the full release gives {standard})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
