from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CaptureGroup(_message.Message):
    __slots__ = ("model_name", "model_version", "request_ids", "timestamp_ns", "inputs", "classes", "probabilities", "predicted_class", "confidence", "margin", "truncated")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    timestamp_ns: _containers.RepeatedScalarFieldContainer[int]
    inputs: _containers.RepeatedCompositeFieldContainer[InputColumn]
    classes: int
    probabilities: bytes
    predicted_class: _containers.RepeatedScalarFieldContainer[int]
    confidence: _containers.RepeatedScalarFieldContainer[float]
    margin: _containers.RepeatedScalarFieldContainer[float]
    truncated: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., request_ids: _Optional[_Iterable[str]] = ..., timestamp_ns: _Optional[_Iterable[int]] = ..., inputs: _Optional[_Iterable[_Union[InputColumn, _Mapping]]] = ..., classes: _Optional[int] = ..., probabilities: _Optional[bytes] = ..., predicted_class: _Optional[_Iterable[int]] = ..., confidence: _Optional[_Iterable[float]] = ..., margin: _Optional[_Iterable[float]] = ..., truncated: _Optional[_Iterable[int]] = ...) -> None: ...

class InputColumn(_message.Message):
    __slots__ = ("name", "datatype", "shape", "data", "sizes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class CaptureBatch(_message.Message):
    __slots__ = ("batch_id", "sender", "groups")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    sender: str
    groups: _containers.RepeatedCompositeFieldContainer[CaptureGroup]
    def __init__(self, batch_id: _Optional[int] = ..., sender: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[CaptureGroup, _Mapping]]] = ...) -> None: ...

class CaptureRecord(_message.Message):
    __slots__ = ("request_id", "model_name", "model_version", "timestamp_ns", "inputs", "probabilities", "predicted_class", "confidence", "margin", "truncated")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    model_version: str
    timestamp_ns: int
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    predicted_class: int
    confidence: float
    margin: float
    truncated: bool
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., timestamp_ns: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., probabilities: _Optional[_Iterable[float]] = ..., predicted_class: _Optional[int] = ..., confidence: _Optional[float] = ..., margin: _Optional[float] = ..., truncated: _Optional[bool] = ...) -> None: ...

class CaptureAck(_message.Message):
    __slots__ = ("batch_id", "stored", "duplicates", "error")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    stored: int
    duplicates: int
    error: str
    def __init__(self, batch_id: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...
