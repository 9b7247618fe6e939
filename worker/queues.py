"""Queue and task names: constants, because scripts, the Procfile and Flower rely on them."""


class Queues:
    #: Messages of one to four customer elements of one job, and never many more than the fleet can
    #: run at once (worker/dispatch/scheduler.py).
    ITEMS = "items"
    #: Job-level work (finishing, callbacks): kept apart so it never waits behind items.
    JOBS = "jobs"

    @classmethod
    def all(cls) -> tuple[str, ...]:
        return (cls.ITEMS, cls.JOBS)


class TaskNames:
    PROCESS_ITEM = "customer_upsert.process_item"
    END_JOB = "customer_upsert.end_job"
    SEND_CALLBACK = "customer_upsert.send_callback"
