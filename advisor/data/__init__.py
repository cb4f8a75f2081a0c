"""The data stage: the user's images. Layouts (class folders, split folders, CSV), the scan and its
split, image files (formats, header checks, opening as RGB), the decoded-image store, training datasets.

Imports advisor.core only.
"""
