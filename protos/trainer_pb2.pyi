from protos import collector_pb2 as _collector_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("unlabeled", "labeled", "holdout", "feedback", "rounds", "active_version", "model_name", "last_promotion", "round_in_progress", "pseudo_labeled", "stored_bytes")
    UNLABELED_FIELD_NUMBER: _ClassVar[int]
    LABELED_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_PROMOTION_FIELD_NUMBER: _ClassVar[int]
    ROUND_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_LABELED_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    unlabeled: int
    labeled: int
    holdout: int
    feedback: int
    rounds: int
    active_version: str
    model_name: str
    last_promotion: RoundSummary
    round_in_progress: bool
    pseudo_labeled: int
    stored_bytes: int
    def __init__(self, unlabeled: _Optional[int] = ..., labeled: _Optional[int] = ..., holdout: _Optional[int] = ..., feedback: _Optional[int] = ..., rounds: _Optional[int] = ..., active_version: _Optional[str] = ..., model_name: _Optional[str] = ..., last_promotion: _Optional[_Union[RoundSummary, _Mapping]] = ..., round_in_progress: _Optional[bool] = ..., pseudo_labeled: _Optional[int] = ..., stored_bytes: _Optional[int] = ...) -> None: ...

class LabelItem(_message.Message):
    __slots__ = ("request_id", "sample", "label")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    sample: Sample
    label: int
    def __init__(self, request_id: _Optional[str] = ..., sample: _Optional[_Union[Sample, _Mapping]] = ..., label: _Optional[int] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[_collector_pb2.Tensor]
    def __init__(self, inputs: _Optional[_Iterable[_Union[_collector_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class SubmitLabelsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[LabelItem]
    def __init__(self, items: _Optional[_Iterable[_Union[LabelItem, _Mapping]]] = ...) -> None: ...

class SubmitLabelsResponse(_message.Message):
    __slots__ = ("accepted", "unknown_ids")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_IDS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    unknown_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[int] = ..., unknown_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListUncertainRequest(_message.Message):
    __slots__ = ("k", "strategy")
    K_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    k: int
    strategy: str
    def __init__(self, k: _Optional[int] = ..., strategy: _Optional[str] = ...) -> None: ...

class UncertainSample(_message.Message):
    __slots__ = ("request_id", "score", "probabilities", "predicted_class", "model_version", "inputs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    score: float
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    predicted_class: int
    model_version: str
    inputs: _containers.RepeatedCompositeFieldContainer[_collector_pb2.Tensor]
    def __init__(self, request_id: _Optional[str] = ..., score: _Optional[float] = ..., probabilities: _Optional[_Iterable[float]] = ..., predicted_class: _Optional[int] = ..., model_version: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_collector_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class ListUncertainResponse(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[UncertainSample]
    def __init__(self, samples: _Optional[_Iterable[_Union[UncertainSample, _Mapping]]] = ...) -> None: ...

class TriggerRoundRequest(_message.Message):
    __slots__ = ("wait",)
    WAIT_FIELD_NUMBER: _ClassVar[int]
    wait: bool
    def __init__(self, wait: _Optional[bool] = ...) -> None: ...

class TriggerRoundResponse(_message.Message):
    __slots__ = ("round", "summary")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    round: int
    summary: RoundSummary
    def __init__(self, round: _Optional[int] = ..., summary: _Optional[_Union[RoundSummary, _Mapping]] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RoundSummary(_message.Message):
    __slots__ = ("round", "outcome", "reason", "teacher_version", "student_version", "teacher_holdout_accuracy", "student_holdout_accuracy", "pseudo_labels_accepted", "pseudo_labels_rejected", "duration_seconds", "started_unix_ns", "report_path")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    STUDENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEACHER_HOLDOUT_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    STUDENT_HOLDOUT_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_LABELS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_LABELS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    REPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    round: int
    outcome: str
    reason: str
    teacher_version: str
    student_version: str
    teacher_holdout_accuracy: float
    student_holdout_accuracy: float
    pseudo_labels_accepted: int
    pseudo_labels_rejected: int
    duration_seconds: float
    started_unix_ns: int
    report_path: str
    def __init__(self, round: _Optional[int] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., teacher_version: _Optional[str] = ..., student_version: _Optional[str] = ..., teacher_holdout_accuracy: _Optional[float] = ..., student_holdout_accuracy: _Optional[float] = ..., pseudo_labels_accepted: _Optional[int] = ..., pseudo_labels_rejected: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., started_unix_ns: _Optional[int] = ..., report_path: _Optional[str] = ...) -> None: ...

class ListRoundsResponse(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundSummary]
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundSummary, _Mapping]]] = ...) -> None: ...
