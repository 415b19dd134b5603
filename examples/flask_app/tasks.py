"""The shop's database, its queue and its tasks: imported by the web app and by the worker."""

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pgq_sa import Job, Queue
from pgq_sa._config import make_engine, resolve_url

# PGQ_SA_DATABASE_URL or DATABASE_URL; with neither set, the embedded PostgreSQL.
engine = make_engine(resolve_url().url)
queue = Queue()  # schema "pgq", installed with `pgq-sa db upgrade`


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (CheckConstraint("stock >= 0", name="stock_not_negative"),)

    sku: Mapped[str] = mapped_column(String(40), primary_key=True)
    stock: Mapped[int]


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int]
    email: Mapped[str] = mapped_column(String(320))
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@queue.task("orders.confirm", max_attempts=5, timeout=30)
def confirm_order(job: Job) -> dict:
    """Send the confirmation e-mail (printed here) and record that it went out."""
    with Session(engine) as session, session.begin():
        order = session.get_one(Order, job.payload["order_id"])
        print(f"to {order.email}: {order.quantity} x {order.sku} confirmed", flush=True)
        order.confirmed_at = func.now()
        return {"sent_to": order.email}


def create_tables() -> None:
    """Create the shop's tables and stock a product (a real app would use its migrations)."""
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        if session.scalar(select(func.count()).select_from(Product)) == 0:
            session.add(Product(sku="mug", stock=3))
