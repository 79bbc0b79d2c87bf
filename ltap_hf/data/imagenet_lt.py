"""ImageNet-LT (Liu et al. 2019): the official split files over a local copy of ILSVRC-2012."""

from __future__ import annotations

from .official_splits import OfficialSplitBuilder


class ImagenetLT(OfficialSplitBuilder):
    """ImageNet-LT: 1,000 classes; train 115,846 images (1,280 down to 5 per class), validation
    20 per class (ILSVRC train images that the train list leaves out), test 50 per class (the ILSVRC
    validation set). All three come from the official files, which are disjoint (the build checks it),
    so ``val_per_class`` and ``seed`` do not apply."""

    NUM_CLASSES = 1000
    SPLIT_FILES = {
        "train": ("ImageNet_LT_train.txt",),
        "validation": ("ImageNet_LT_val.txt",),
        "test": ("ImageNet_LT_test.txt",),
    }
    SUMMARY = "ImageNet-LT: long-tailed subset of ILSVRC-2012 (Liu et al. 2019), official split files."
    HOMEPAGE = "https://github.com/zhmiao/OpenLongTailRecognition-OLTR"
    CITATION = """@inproceedings{liu2019large,
  title={Large-Scale Long-Tailed Recognition in an Open World},
  author={Liu, Ziwei and Miao, Zhongqi and Zhan, Xiaohang and Wang, Jiayun and Gong, Boqing and Yu, Stella X.},
  booktitle={CVPR},
  year={2019}
}"""
    manual_download_instructions = """ImageNet-LT needs a manual download:
1. Download the ILSVRC-2012 train and validation images from https://image-net.org/ (login required)
   and extract them into one folder, the image root, so that
   <root>/train/n01440764/n01440764_10026.JPEG and <root>/val/n01440764/ILSVRC2012_val_00000293.JPEG
   exist (validation images sorted into one folder per WordNet id).
2. Get ImageNet_LT_train.txt, ImageNet_LT_val.txt and ImageNet_LT_test.txt (Liu et al. 2019,
   https://github.com/zhmiao/OpenLongTailRecognition-OLTR) and put them in the image root, or
   anywhere and pass split_dir=<that folder>.
3. load_lt_dataset("imagenet_lt", data_dir=<root>)."""
