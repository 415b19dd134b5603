"""A FastAPI service: enqueue on its AsyncSession, run the jobs with an AsyncWorker in its lifespan.

Run: `python app.py` (port 8000, or $PORT), or `uvicorn app:app`. POST /signups {"email": ...}.
"""

import os
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

import anyio
import uvicorn
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import DateTime, String, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgq_sa import AsyncWorker, Job, Queue
from pgq_sa._config import make_async_engine, resolve_url

engine = make_async_engine(resolve_url().url)  # asyncpg
Session = async_sessionmaker(engine, expire_on_commit=False)
queue = Queue()


class Base(DeclarativeBase):
    pass


class Signup(Base):
    __tablename__ = "signups"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    welcomed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@queue.task("signups.welcome", max_attempts=5, timeout=30)
async def welcome(job: Job) -> dict:
    """Send the welcome e-mail (printed here) and record that it went out."""
    async with Session.begin() as session:
        signup = await session.scalar(select(Signup).where(Signup.email == job.payload["email"]))
        print(f"welcome, {signup.email}!", flush=True)
        signup.welcomed_at = func.now()
    return {"welcomed": job.payload["email"]}


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with engine.begin() as connection:  # a real service would use its migrations
        await connection.run_sync(Base.metadata.create_all)
    # The server owns the process's signals: the worker stops when the server shuts down.
    worker = AsyncWorker(queue, engine, concurrency=50, handle_signals=False)
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        yield
        worker.stop()  # finish running jobs, hand back the rest
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


async def get_session():
    async with Session() as session:
        yield session


class SignupIn(BaseModel):
    email: str


@app.post("/signups", status_code=201)
async def sign_up(body: SignupIn, session: Annotated[AsyncSession, Depends(get_session)]) -> dict:
    try:
        session.add(Signup(email=body.email))
        # The job joins the session's transaction: it exists only if the signup commits.
        job_id = await queue.enqueue_async(session, "signups.welcome", {"email": body.email})
        await session.commit()
    except IntegrityError:  # a second signup with this e-mail: neither row nor job is kept
        await session.rollback()
        raise HTTPException(409, f"{body.email} has already signed up") from None
    return {"email": body.email, "job": job_id}


@app.get("/health")
async def health() -> dict:
    return {"ok": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
