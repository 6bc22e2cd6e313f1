"""CTR backbones: pure nn.Modules built from a FeatureSpec, `forward(batch) -> logits (B,)`.
A backbone is one file here plus one yaml in conf/backbone/."""
