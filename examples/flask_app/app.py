"""A Flask app that enqueues a job in the same transaction as the order it stores.

Run: `python app.py` (port 5000, or $PORT). POST /orders {"sku": "mug", "quantity": 1,
"email": ...}: the order, the stock update and the confirmation job commit together; when the
stock runs out the transaction rolls back, and the job with it.
"""

import os

from flask import Flask, request
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tasks import Order, Product, create_tables, engine, queue

app = Flask(__name__)


@app.post("/orders")
def create_order():
    data = request.get_json()
    with Session(engine) as session:
        order = Order(sku=data["sku"], quantity=data["quantity"], email=data["email"])
        session.add(order)
        session.flush()  # the order's id, for the job's payload
        order_id = order.id
        # The job joins the session's transaction: it exists only if the order commits.
        job_id = queue.enqueue(session, "orders.confirm", {"order_id": order_id})
        try:
            session.execute(  # violates the CHECK (stock >= 0) when there is not enough
                update(Product)
                .where(Product.sku == order.sku)
                .values(stock=Product.stock - order.quantity)
            )
            session.commit()
        except IntegrityError:
            session.rollback()  # no order, no stock change, no job
            return {"error": f"not enough {data['sku']} in stock"}, 409
    return {"order": order_id, "job": job_id}, 201


@app.get("/health")
def health():
    return {"ok": True}


if __name__ == "__main__":
    create_tables()
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
