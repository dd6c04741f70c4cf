"""Create VOC 2012's train_aug split (10,582 images) from SBD: SegmentationClassAug/ and train_aug.txt.

    python scripts/prepare_sbd.py --sbd /data/benchmark_RELEASE --voc /data/VOC

--sbd: the extracted SBD release (benchmark_RELEASE/ or its dataset/ folder, which holds cls/, train.txt, val.txt).
--voc: the folder that holds VOCdevkit/ (or VOCdevkit/VOC2012 itself). See docs/datasets.md.
"""

import argparse
import sys

from seg.data.sbd import prepare_sbd
from seg.errors import UserError

STANDARD_COUNT = 10582


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sbd", required=True, help="SBD folder (benchmark_RELEASE)")
    parser.add_argument("--voc", required=True, help="folder that holds VOCdevkit/")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing SegmentationClassAug/ or train_aug.txt (never the inputs)")
    args = parser.parse_args()
    try:
        count = prepare_sbd(args.sbd, args.voc, overwrite=args.overwrite)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"train_aug: {count} images" + ("" if count == STANDARD_COUNT else
                                           f" (the full VOC 2012 + SBD releases give {STANDARD_COUNT})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
