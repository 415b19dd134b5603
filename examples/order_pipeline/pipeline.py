"""The shop's orders and the pipeline that fulfils them: imported by `place_order.py` and by both
workers.

An order is fulfilled by a workflow of five kinds of steps:

    reserve ──► charge ──► pack (one per item, in parallel) ──► ship
                  └──────► release  (compensation: runs whatever the charge did)

`release` declares `on_upstream_failure="run"`: when the charge fails for good it runs anyway,
reads the failure in `job.upstream`, gives the reserved stock back and marks the order
cancelled; `pack` and `ship` are cancelled with the charge (their default policy).
"""

from __future__ import annotations

import os
from datetime import datetime

import anyio
from sqlalchemy import JSON, DateTime, String, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pgq_sa import Job, JobStatus, Queue, Workflow
from pgq_sa._config import make_engine, resolve_url

# PGQ_SA_DATABASE_URL or DATABASE_URL; with neither set, the embedded PostgreSQL.
engine = make_engine(resolve_url().url)
queue = Queue()  # schema "pgq", installed with `pgq-sa db upgrade`
CARD_LIMIT = 100  # the payment provider declines bigger orders


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(40), primary_key=True)
    price: Mapped[int]
    stock: Mapped[int]


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    items: Mapped[list[str]] = mapped_column(JSON)  # one sku per item
    status: Mapped[str] = mapped_column(String(20), default="new")
    workflow_id: Mapped[int | None]
    shipped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def fulfilment(order: Order) -> Workflow:
    """The workflow fulfilling ``order``: fan-out per item, fan-in to shipping, compensation."""
    flow = Workflow(f"order {order.id}")
    reserve = flow.add("orders.reserve", {"order": order.id})
    charge = flow.add("orders.charge", {"order": order.id}, after=[reserve], max_attempts=1)
    packs = flow.add_many(
        "orders.pack", [{"order": order.id, "sku": sku} for sku in order.items], after=[charge]
    )
    flow.add("orders.ship", {"order": order.id}, after=packs)
    flow.add("orders.release", {"order": order.id}, after=[charge], on_upstream_failure="run")
    return flow


def place_order(items: list[str]) -> tuple[int, int]:
    """Store the order and enqueue its workflow in one transaction; (order id, workflow id)."""
    with Session(engine) as session, session.begin():
        order = Order(items=items)
        session.add(order)
        session.flush()  # the order's id, for the payloads
        order.workflow_id = queue.enqueue_workflow(session, fulfilment(order))
        return order.id, order.workflow_id


def _move_stock(session: Session, items: list[str], delta: int) -> None:
    """Take ``items`` out of stock (``delta`` -1) or put them back (+1)."""
    for sku in items:
        session.execute(
            update(Product).where(Product.sku == sku).values(stock=Product.stock + delta)
        )


def _set_status(order_id: int, status: str) -> None:
    with Session(engine) as session, session.begin():
        session.execute(update(Order).where(Order.id == order_id).values(status=status))


@queue.task("orders.reserve")
def reserve(job: Job) -> dict:
    """Take the items out of stock (a def handler: runs on a thread of either worker)."""
    with Session(engine) as session, session.begin():
        order = session.get_one(Order, job.payload["order"])
        _move_stock(session, order.items, -1)
        order.status = "reserved"
        prices = dict(session.execute(select(Product.sku, Product.price)).tuples().all())
        total = sum(prices[sku] for sku in order.items)
    return {"total": total, "pid": os.getpid()}


@queue.task("orders.charge")
async def charge(job: Job) -> dict:
    """Charge the card: the reserve step's result says how much (an async def handler)."""
    (reserved,) = job.upstream.values()
    total = reserved.result["total"]
    await anyio.sleep(0.01)  # the payment provider
    if total > CARD_LIMIT:
        raise RuntimeError(f"card declined for {total}")
    await anyio.to_thread.run_sync(_set_status, job.payload["order"], "paid")
    return {"charged": total, "pid": os.getpid()}


@queue.task("orders.pack")
def pack(job: Job) -> dict:
    print(f"order {job.payload['order']}: packed {job.payload['sku']}", flush=True)
    return {"packed": job.payload["sku"], "pid": os.getpid()}


@queue.task("orders.ship")
def ship(job: Job) -> dict:
    packed = sorted(step.result["packed"] for step in job.upstream.values())
    with Session(engine) as session, session.begin():
        order = session.get_one(Order, job.payload["order"])
        order.status, order.shipped_at = "shipped", func.now()
    print(f"order {job.payload['order']}: shipped {', '.join(packed)}", flush=True)
    return {"shipped": packed, "pid": os.getpid()}


@queue.task("orders.release")
def release(job: Job) -> dict:
    """The compensation: runs after the charge, whatever became of it."""
    (charged,) = job.upstream.values()
    if charged.status is JobStatus.succeeded:
        return {"released": False, "pid": os.getpid()}
    with Session(engine) as session, session.begin():
        order = session.get_one(Order, job.payload["order"])
        _move_stock(session, order.items, +1)
        order.status = "cancelled"
    print(f"order {job.payload['order']}: {charged.error}; stock released", flush=True)
    return {"released": True, "pid": os.getpid()}


def create_tables() -> None:
    """Create the shop's tables and stock its products (a real app would use its migrations)."""
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        if session.scalar(select(func.count()).select_from(Product)) == 0:
            session.add_all(
                [Product(sku="mug", price=12, stock=10), Product(sku="lamp", price=90, stock=10)]
            )
