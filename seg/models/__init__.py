from seg.models.backbone import BACKBONES, OUTPUT_STRIDES, stage_plan
from seg.models.deeplab import ENCODERS, HEADS, DeepLabV3, build_model, check_arguments
from seg.models.files import model_from_file
from seg.models.lraspp import LRASPP
from seg.models.weights import LoadReport, load_weights

__all__ = ["BACKBONES", "ENCODERS", "OUTPUT_STRIDES", "HEADS", "DeepLabV3", "LRASPP", "LoadReport", "build_model",
           "check_arguments", "load_weights", "model_from_file", "stage_plan"]
