"""The measure stage: what the data says through a backbone. Pooled features and their cache, logistic
probes, similarity to ImageNet, transferability per depth, and the dataset profile that gathers them.

Imports advisor.core, advisor.data and advisor.backbones.
"""
