"""The pack's ComfyUI nodes (V3 schema). Each module declares and wires; the work lives elsewhere."""


def all_nodes() -> list:
    """Every node class of the pack, in menu order. Imported lazily by the extension."""
    from .continual import (AddConcept, ConceptPool, ConceptPoolLoRA, ContinualRegularizer, LoadConceptPool, RetentionReport,
                            SaveConceptPool)
    from .guider import PersonalizationGuider
    from .host import register_metrics_folder
    from .lora_files import LoadLora, SaveLora
    from .metrics import DriftMetrics, PersonalizationMetrics
    from .pretrained_model import PretrainedShapesModel
    from .regularizers import APT, DCO, ClassImages, ParameterAnchor, PriorPreservation
    from .shapes_scores import ShapesScores
    from .tiny_model import TinyModel
    from .train_lora import TrainLora
    from .training_data import FolderData, LoadImages, TrainingData

    register_metrics_folder()  # models/driftless_metrics, where the metrics nodes find CLIP and DINO
    return [LoadImages, TrainingData, FolderData, TrainLora, SaveLora, LoadLora, ParameterAnchor, DCO, APT,
            PriorPreservation, ClassImages, ConceptPool, LoadConceptPool, ContinualRegularizer, AddConcept,
            SaveConceptPool, ConceptPoolLoRA, RetentionReport, PersonalizationGuider, PersonalizationMetrics,
            DriftMetrics, TinyModel, PretrainedShapesModel, ShapesScores]
