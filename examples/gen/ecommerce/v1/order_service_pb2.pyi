from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USER_ROLE_UNSPECIFIED: _ClassVar[UserRole]
    CUSTOMER: _ClassVar[UserRole]
    ADMIN: _ClassVar[UserRole]
    SUPPORT: _ClassVar[UserRole]

class OrderStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATUS_UNSPECIFIED: _ClassVar[OrderStatus]
    PENDING: _ClassVar[OrderStatus]
    PAID: _ClassVar[OrderStatus]
    SHIPPED: _ClassVar[OrderStatus]
    DELIVERED: _ClassVar[OrderStatus]
    CANCELLED: _ClassVar[OrderStatus]
USER_ROLE_UNSPECIFIED: UserRole
CUSTOMER: UserRole
ADMIN: UserRole
SUPPORT: UserRole
ORDER_STATUS_UNSPECIFIED: OrderStatus
PENDING: OrderStatus
PAID: OrderStatus
SHIPPED: OrderStatus
DELIVERED: OrderStatus
CANCELLED: OrderStatus

class User(_message.Message):
    __slots__ = ("id", "email", "name", "role")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    name: str
    role: UserRole
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[_Union[UserRole, str]] = ...) -> None: ...

class OrderItem(_message.Message):
    __slots__ = ("sku", "quantity", "price_cents")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    price_cents: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., price_cents: _Optional[int] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("id", "user_id", "items", "status", "total_cents", "created_at_unix_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[OrderItem]
    status: OrderStatus
    total_cents: int
    created_at_unix_ms: int
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[OrderItem, _Mapping]]] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., total_cents: _Optional[int] = ..., created_at_unix_ms: _Optional[int] = ...) -> None: ...

class CreateOrderRequest(_message.Message):
    __slots__ = ("user_id", "items", "idempotency_key")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[OrderItem]
    idempotency_key: str
    def __init__(self, user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[OrderItem, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CreateOrderResponse(_message.Message):
    __slots__ = ("order", "served_by")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    order: Order
    served_by: str
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., served_by: _Optional[str] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetOrderResponse(_message.Message):
    __slots__ = ("order", "served_by")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    order: Order
    served_by: str
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., served_by: _Optional[str] = ...) -> None: ...

class WatchOrderRequest(_message.Message):
    __slots__ = ("order_id", "updates", "interval_ms", "advance")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    ADVANCE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    updates: int
    interval_ms: int
    advance: bool
    def __init__(self, order_id: _Optional[str] = ..., updates: _Optional[int] = ..., interval_ms: _Optional[int] = ..., advance: _Optional[bool] = ...) -> None: ...

class WatchOrderResponse(_message.Message):
    __slots__ = ("order", "sequence", "served_by")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    order: Order
    sequence: int
    served_by: str
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., sequence: _Optional[int] = ..., served_by: _Optional[str] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("user_id", "status", "limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    status: OrderStatus
    limit: int
    def __init__(self, user_id: _Optional[str] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("order", "served_by")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    order: Order
    served_by: str
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., served_by: _Optional[str] = ...) -> None: ...

class BatchCreateOrdersResponse(_message.Message):
    __slots__ = ("created_count", "order_ids", "served_by")
    CREATED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ORDER_IDS_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    created_count: int
    order_ids: _containers.RepeatedScalarFieldContainer[str]
    served_by: str
    def __init__(self, created_count: _Optional[int] = ..., order_ids: _Optional[_Iterable[str]] = ..., served_by: _Optional[str] = ...) -> None: ...

class ProcessOrdersRequest(_message.Message):
    __slots__ = ("request_id", "order_id", "new_status")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_STATUS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    order_id: str
    new_status: OrderStatus
    def __init__(self, request_id: _Optional[str] = ..., order_id: _Optional[str] = ..., new_status: _Optional[_Union[OrderStatus, str]] = ...) -> None: ...

class ProcessOrdersResponse(_message.Message):
    __slots__ = ("request_id", "order_id", "status", "applied", "sequence", "served_by")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    order_id: str
    status: OrderStatus
    applied: bool
    sequence: int
    served_by: str
    def __init__(self, request_id: _Optional[str] = ..., order_id: _Optional[str] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., applied: _Optional[bool] = ..., sequence: _Optional[int] = ..., served_by: _Optional[str] = ...) -> None: ...
