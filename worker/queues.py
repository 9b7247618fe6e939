"""Queue and task names: constants, because scripts, the Procfile and Flower rely on them."""


class Queues:
    #: One message per customer element.
    ITEMS = "items"
    #: Job-level work (fan-out, finishing): kept apart so it never waits behind a long item queue.
    JOBS = "jobs"

    @classmethod
    def all(cls) -> tuple[str, ...]:
        return (cls.ITEMS, cls.JOBS)


class TaskNames:
    FAN_OUT = "customer_upsert.fan_out"
    PROCESS_ITEM = "customer_upsert.process_item"
    FINISH_JOB = "customer_upsert.finish_job"
    SEND_CALLBACK = "customer_upsert.send_callback"
