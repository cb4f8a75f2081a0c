"""The decide stage: from a profile to a plan. Thresholds and rules (the 2x2 table and its overrides),
the fine-tune recipe, the accuracy and time forecasts, the policy that picks the strategy, the recommendation.

Imports advisor.core, advisor.data, advisor.backbones and advisor.measure.
"""
