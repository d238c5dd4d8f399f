"""Deterministic phantom data of four kinds, the project's built-in demo and test data.

One module per kind: `lgg` (LGG-like patients in the Kaggle kaggle_3m layout),
`lesions` (3-D white-matter-lesion heads, NIfTI), `chest` (chest CTs in
Hounsfield units with lung labels, NIfTI) and `pairs` (T1 -> contrast-map
image pairs, PNG); `shapes` holds the drawing helpers they share and `nifti`
the writer of the 3-D cases.
`python -m data_prep.phantoms --out_dir=DIR` writes LGG phantoms.
"""
