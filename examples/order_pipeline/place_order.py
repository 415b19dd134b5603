"""Place an order: `python place_order.py mug mug lamp` prints the order and workflow ids.

The order row and its whole fulfilment workflow commit in one transaction.
"""

import sys

from pipeline import create_tables, place_order

if __name__ == "__main__":
    create_tables()
    order_id, workflow_id = place_order(sys.argv[1:] or ["mug"])
    print(f"order {order_id}: workflow {workflow_id}", flush=True)
