"""iNaturalist 2018 (Van Horn et al. 2018), with the long-tailed literature's split files."""

from __future__ import annotations

from .official_splits import OfficialSplitBuilder


class Inaturalist2018(OfficialSplitBuilder):
    """iNaturalist 2018: 8,142 classes, 437,513 train images (1,000 down to 2 per class),
    24,426 validation images (3 per class).

    Its test labels were never released: as in the long-tailed literature (e.g. Kang et al. 2020),
    ``test`` is the official validation set, the same images as ``validation``. Use ``validation``
    for model selection knowing that it is the reported test set too.
    """

    NUM_CLASSES = 8142
    SPLIT_FILES = {
        "train": ("iNaturalist18_train.txt", "train2018.json"),
        "validation": ("iNaturalist18_val.txt", "val2018.json"),
        "test": ("iNaturalist18_val.txt", "val2018.json"),
    }
    SUMMARY = "iNaturalist 2018: naturally long-tailed species classification, official train and validation sets."
    NOTES = "test is the official validation set (test labels were never released), as in the literature"
    HOMEPAGE = "https://github.com/visipedia/inat_comp/tree/master/2018"
    CITATION = """@inproceedings{van2018inaturalist,
  title={The iNaturalist Species Classification and Detection Dataset},
  author={Van Horn, Grant and Mac Aodha, Oisin and Song, Yang and Cui, Yin and Sun, Chen and Shepard, Alex
          and Adam, Hartwig and Perona, Pietro and Belongie, Serge},
  booktitle={CVPR},
  year={2018}
}"""
    manual_download_instructions = """iNaturalist 2018 needs a manual download:
1. Download train_val2018.tar.gz from https://github.com/visipedia/inat_comp/tree/master/2018 and
   extract it into a folder, the image root, so that
   <root>/train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg exists.
2. Put the split files next to it (or anywhere and pass split_dir=<that folder>): either
   iNaturalist18_train.txt and iNaturalist18_val.txt (Kang et al. 2020,
   https://github.com/facebookresearch/classifier-balancing) or the official train2018.json and
   val2018.json annotations.
3. load_lt_dataset("inaturalist2018", data_dir=<root>)."""
