"""Emits OpenLineage run events with the real openlineage-python client, as an orchestrator does.

    lineage_client.py http URL TOKEN NAMESPACE EVENT...     (HTTP transport, gzip, bearer token)
    lineage_client.py kafka BROKERS TOPIC NAMESPACE EVENT... (Kafka transport)

Each EVENT is JOB:TYPE[:ROWS[,ROWS...]][:ERROR]: the job's name, the OpenLineage event type
(START, RUNNING, COMPLETE, FAIL, ABORT), the row counts of its outputs, and for a failure its
error message. `DATASET` as an EVENT emits a DatasetEvent (no run). A job's runId is derived from
its namespace and name, so one run's events share it across calls.
"""

import datetime
import sys
import uuid

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import DatasetEvent, Job, OutputDataset, Run, RunEvent, RunState, StaticDataset
from openlineage.client.facet_v2 import error_message_run, output_statistics_output_dataset


def transport(kind, address, secret):
    if kind == "http":
        from openlineage.client.transport.http import ApiKeyTokenProvider, HttpCompression, HttpConfig, HttpTransport

        auth = ApiKeyTokenProvider({"apiKey": secret}) if secret else None
        config = HttpConfig(url=address, compression=HttpCompression.GZIP, timeout=10.0, **({"auth": auth} if auth else {}))
        return HttpTransport(config)
    from openlineage.client.transport.kafka import KafkaConfig, KafkaTransport

    return KafkaTransport(KafkaConfig(config={"bootstrap.servers": address, "acks": "all"}, topic=secret, flush=True))


def main():
    kind, address, secret, namespace, *events = sys.argv[1:]
    client = OpenLineageClient(transport=transport(kind, address, secret))
    for spec in events:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        if spec == "DATASET":
            client.emit(DatasetEvent(eventTime=now, producer="herald-tests", dataset=StaticDataset(namespace=namespace, name="static")))
            continue
        job, kind_of_event, *rest = spec.split(":", 3)
        rows = [int(n) for n in rest[0].split(",") if n] if rest else []
        error = rest[1] if len(rest) > 1 else None
        run = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{job}"))
        facets = {}
        if error:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(message=error, programmingLanguage="python")
        outputs = [
            OutputDataset(
                namespace="s3://lake",
                name=f"{job}/part{i}",
                outputFacets={"outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=n)},
            )
            for i, n in enumerate(rows)
        ]
        client.emit(
            RunEvent(
                eventType=RunState[kind_of_event],
                eventTime=now,
                run=Run(runId=run, facets=facets),
                job=Job(namespace=namespace, name=job),
                producer="herald-tests",
                outputs=outputs,
            )
        )
    client.close()


if __name__ == "__main__":
    main()
