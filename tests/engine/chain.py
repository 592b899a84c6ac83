"""A three-handler chain: command -> Started -> Relayed -> Finished, across three aggregates."""

from __future__ import annotations

from pathlib import Path

from tidings import Domain, current_domain, handle
from tidings.fields import Identifier, Integer, String


def build_chain(processing: str) -> Domain:
    domain = Domain("chain", root_path=Path(__file__).parent)
    domain.config.update(
        event_processing=processing, command_processing=processing, message_processing="sync"
    )

    @domain.aggregate
    class Job:
        name: String(required=True)

    @domain.aggregate
    class Step:
        job_id: Identifier(identifier=True)
        hops: Integer(default=0)

    @domain.aggregate
    class Report:
        job_id: Identifier(identifier=True)
        summary: String()

    @domain.event(part_of=Job)
    class JobStarted:
        job_id: Identifier(required=True)

    @domain.event(part_of=Step)
    class StepTaken:
        job_id: Identifier(required=True)
        hops: Integer(required=True)

    @domain.event(part_of=Report)
    class JobReported:
        job_id: Identifier(required=True)

    @domain.command(part_of=Job)
    class StartJob:
        job_id: Identifier(required=True)
        name: String(required=True)

    @domain.command_handler(part_of=Job)
    class Jobs:
        @handle(StartJob)
        def start(self, command):
            job = Job(id=command.job_id, name=command.name)
            job.raise_(JobStarted(job_id=job.id))
            current_domain.repository_for(Job).add(job)

    @domain.event_handler(part_of=Step, stream_category="job")
    class TakeStep:
        @handle(JobStarted)
        def take(self, event):
            step = Step(job_id=event.job_id, hops=1)
            step.raise_(StepTaken(job_id=event.job_id, hops=1))
            current_domain.repository_for(Step).add(step)

    @domain.event_handler(part_of=Report, stream_category="step")
    class WriteReport:
        @handle(StepTaken)
        def write(self, event):
            report = Report(job_id=event.job_id, summary=f"{event.hops} hop(s)")
            report.raise_(JobReported(job_id=event.job_id))
            current_domain.repository_for(Report).add(report)

    @domain.event_handler(part_of=Step, stream_category="report")
    class CloseStep:
        @handle(JobReported)
        def close(self, event):
            repo = current_domain.repository_for(Step)
            step = repo.get(event.job_id)
            step.hops += 1
            repo.add(step)

    return domain


def chain_state(domain: Domain, job_id: str) -> tuple | None:
    reg = domain.registry["aggregate"]
    with domain.domain_context():
        try:
            return (
                domain.repository_for(reg["Job"]).get(job_id).name,
                domain.repository_for(reg["Step"]).get(job_id).hops,
                domain.repository_for(reg["Report"]).get(job_id).summary,
            )
        except Exception:  # noqa: BLE001 - not there yet
            return None
