"""Vision and audio towers and their projectors in multimodal checkpoints, and the prefixes the
multimodal wrapper puts before the text model's names."""

from quantkit.families.base import Family

__all__ = ["VISION"]

_TOWER = ("vision tower: patch embeddings and ViT blocks lose accuracy in FP4, some widths are not "
          "divisible by 16; NVIDIA's VL checkpoints keep them BF16")
_PROJ = "modality projector: small and sensitive; kept in BF16"

VISION = Family(
    name="vision",
    description="vision/audio towers and projectors of multimodal models",
    static_rules=(
        ("*visual*", _TOWER),
        ("*vision_tower*", _TOWER),
        ("*vision_model*", _TOWER),
        ("*audio_tower*", "audio encoder: kept in BF16 as in the vendors' multimodal checkpoints"),
        ("*multi_modal_projector*", _PROJ),
        ("*mm_projector*", _PROJ),
        ("*embed_vision*", _PROJ + " (Gemma)"),
        ("*embed_audio*", _PROJ + " (Gemma)"),
    ),
    # The text model's names inside a multimodal wrapper, on disk -> as a text-only model names them.
    name_prefixes=(("model.language_model.", "model."), ("language_model.model.", "model."),
                   ("language_model.", "")),
)
