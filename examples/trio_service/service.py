"""A trio service: a TCP line server that stores each line and enqueues a job for it, and an
AsyncWorker on the same trio loop, both on one sync SQLAlchemy Engine.

Run: `python service.py` (port 7000, or $PORT), then `nc 127.0.0.1 7000` and type a line.
Ctrl-C / SIGTERM: the worker finishes its running jobs, then the server closes.
"""

import logging
import os
from functools import partial

import trio
from sqlalchemy import Text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pgq_sa import AsyncWorker, Job, Queue
from pgq_sa._config import make_engine, resolve_url

engine = make_engine(resolve_url().url)  # psycopg; used from trio through worker threads
queue = Queue()


class Base(DeclarativeBase):
    pass


class Line(Base):
    __tablename__ = "lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    words: Mapped[int | None]


@queue.task("lines.count_words", max_attempts=3)
async def count_words(job: Job) -> int:
    """An async handler on trio: it may use trio's APIs; blocking work goes to a thread."""
    words = len(job.payload["text"].split())
    await trio.to_thread.run_sync(save_count, job.payload["line"], words)
    return words


def save_count(line_id: int, words: int) -> None:
    with Session(engine) as session, session.begin():
        session.execute(update(Line).where(Line.id == line_id).values(words=words))


def store(text: str) -> int:
    """The line and its job in one transaction (a blocking call: run it in a thread)."""
    with Session(engine) as session, session.begin():
        line = Line(text=text)
        session.add(line)
        session.flush()
        return queue.enqueue(session, "lines.count_words", {"line": line.id, "text": text})


async def serve_client(stream: trio.SocketStream) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            job_id = await trio.to_thread.run_sync(store, raw.decode())
            await stream.send_all(f"queued job {job_id}\n".encode())


async def main(port: int) -> None:
    await trio.to_thread.run_sync(Base.metadata.create_all, engine)  # or its migrations
    worker = AsyncWorker(queue, engine, concurrency=20)  # a sync Engine: runs on trio
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, serve_client, port, host="127.0.0.1")
        )
        print(f"listening on 127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)
        await worker.run()  # returns after SIGINT/SIGTERM, once running jobs finished
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    trio.run(main, int(os.environ.get("PORT", "7000")))
