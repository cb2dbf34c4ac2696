"""The KServe V2 / Open Inference Protocol codec: pure functions from bytes to tensors and back."""

from inferbox.protocol.codec import (
    InferRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    TensorLimits,
    decode_infer_request,
    encode_infer_response,
)
from inferbox.protocol.datatypes import (
    ONNX_ELEM_TO_V2,
    ONNX_TO_V2,
    SUPPORTED_DATATYPES,
    V2_TO_NUMPY,
    check_datatype,
    deserialize_bytes_tensor,
    itemsize,
    serialize_bytes_tensor,
    v2_to_triton_config_type,
)

__all__ = [
    "ONNX_ELEM_TO_V2",
    "ONNX_TO_V2",
    "SUPPORTED_DATATYPES",
    "V2_TO_NUMPY",
    "InferRequest",
    "InputTensor",
    "OutputTensor",
    "RequestedOutput",
    "TensorLimits",
    "check_datatype",
    "decode_infer_request",
    "deserialize_bytes_tensor",
    "encode_infer_response",
    "itemsize",
    "serialize_bytes_tensor",
    "v2_to_triton_config_type",
]
