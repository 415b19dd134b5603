"""Step 0006 (frozen): the jobs table's row rules checked when a row is written by a producer,
not by every claim and finish.

Released: never edit this file, and import nothing from the live package here (tests compare its
DDL with a recorded digest). A change to these objects is a new step.

PostgreSQL prepares every CHECK constraint of a table afresh for each statement that writes to
it (``ExecRelCheck`` parses and plans the stored expressions once per execution), whichever
columns the statement sets. The nine rules of ``jobs`` cost each claim and each finish two
such rounds (a finish-and-claim writes the table twice), about a tenth of the database's CPU in a
drain of small batches. The same nine rules now live in one row trigger that fires on INSERT and
on an UPDATE that sets a column a producer or an operator supplies (task, queue, max_attempts,
dedupe_key, timeout, waiting_for, on_upstream_failure). Its WHEN clause is the rules' conjunction
negated, so the function runs only for a row that breaks one, and raises what the CHECK raised:
SQLSTATE 23514 (check_violation) naming the same constraint. The worker's own transitions
(state, attempt, worker_id, run_at, started_at, finished_at, result, error) do not fire it.
"""

from __future__ import annotations

REVISION = "pgq_sa_0006"
DESCRIPTION = "jobs row rules in a trigger on producer columns, not CHECKs on every write"

_RULES = (
    ("jobs_task_length_check", "char_length(NEW.task) BETWEEN 1 AND 255"),
    ("jobs_queue_length_check", "char_length(NEW.queue) BETWEEN 1 AND 255"),
    ("jobs_max_attempts_range_check", "NEW.max_attempts BETWEEN 1 AND 1000"),
    ("jobs_attempt_range_check", "NEW.attempt BETWEEN 0 AND NEW.max_attempts"),
    (
        "jobs_running_has_lease_check",
        "NEW.state <> 'running' OR (NEW.worker_id IS NOT NULL AND NEW.attempt >= 1)",
    ),
    (
        "jobs_dedupe_key_length_check",
        "NEW.dedupe_key IS NULL OR char_length(NEW.dedupe_key) BETWEEN 1 AND 1024",
    ),
    ("jobs_timeout_positive_check", "NEW.timeout IS NULL OR NEW.timeout > 0"),
    ("jobs_waiting_for_check", "NEW.waiting_for >= 0"),
    (
        "jobs_on_upstream_failure_check",
        "NEW.on_upstream_failure IS NULL OR NEW.on_upstream_failure IN ('cancel', 'run')",
    ),
)
_COLUMNS = "task, queue, max_attempts, dedupe_key, timeout, waiting_for, on_upstream_failure"


def up(s: str) -> list[str]:
    q = f'"{s}"'
    checks = "\n".join(
        f"        WHEN NOT coalesce({rule}, true) THEN '{name}'" for name, rule in _RULES
    )
    every_rule = " AND ".join(f"({rule})" for _, rule in _RULES)
    return [
        f"ALTER TABLE {q}.jobs " + ", ".join(f"DROP CONSTRAINT {name}" for name, _ in _RULES),
        f"""CREATE FUNCTION {q}.jobs_check_rules() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    broken text;
BEGIN
    broken := CASE
{checks}
    END;
    IF broken IS NOT NULL THEN
        RAISE EXCEPTION USING
            MESSAGE = 'new row for relation "' || TG_TABLE_NAME
                      || '" violates check constraint "' || broken || '"',
            ERRCODE = 'check_violation', CONSTRAINT = broken,
            TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NEW;
END
$$""",
        f"""CREATE TRIGGER jobs_check_rules
    BEFORE INSERT OR UPDATE OF {_COLUMNS} ON {q}.jobs
    FOR EACH ROW
    WHEN (NOT ({every_rule}))
    EXECUTE FUNCTION {q}.jobs_check_rules()""",
    ]


def down(s: str) -> list[str]:
    q = f'"{s}"'
    return [
        f"DROP TRIGGER IF EXISTS jobs_check_rules ON {q}.jobs",
        f"DROP FUNCTION IF EXISTS {q}.jobs_check_rules()",
        f"ALTER TABLE {q}.jobs "
        + ", ".join(
            f"ADD CONSTRAINT {name} CHECK ({rule.replace('NEW.', '')})" for name, rule in _RULES
        ),
    ]
