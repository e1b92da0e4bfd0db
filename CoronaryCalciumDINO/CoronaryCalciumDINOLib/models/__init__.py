"""Models: ViT backbones (timm) with optional location conditioning, the slice detector,
the UNET segmenter and model bundles.

Modules are imported explicitly (``from CoronaryCalciumDINOLib.models.backbone import
build_backbone``); this package file imports nothing heavy so that the CLI starts fast.
"""
