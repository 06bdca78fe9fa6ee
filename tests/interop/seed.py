"""The producer and consumer of the article herald starts from, verbatim but for the broker
address and topic, which the tests pass in. Used by tests/interop.rs to prove herald reads what
these clients write and writes what they read.

    python seed.py publish BOOTSTRAP TOPIC      # publish_stage_complete(... 'bronze_ingest', 'OrdersDB', 14823)
    python seed.py wait BOOTSTRAP TOPIC GROUP   # wait_for_stage(..., 'OrdersDB'), then print as the article does
"""
import sys

from confluent_kafka import Producer
import json
from datetime import datetime


def publish_stage_complete(
    producer: Producer,
    topic: str,
    stage_name: str,
    source_name: str,
    records_processed: int
) -> None:
    message = {
        'event': 'STAGE_COMPLETE',
        'stage': stage_name,
        'source': source_name,
        'records': records_processed,
        'timestamp': datetime.utcnow().isoformat(),
        'status': 'SUCCESS'
    }
    producer.produce(
        topic,
        key=source_name.encode('utf-8'),
        value=json.dumps(message).encode('utf-8')
    )
    producer.flush()


from confluent_kafka import Consumer


def wait_for_stage(consumer: Consumer, topic: str, expected_source: str) -> dict:
    consumer.subscribe([topic])
    try:
        while True:
            msg = consumer.poll(timeout=5.0)
            if msg is None:
                continue
            if msg.error():
                raise RuntimeError(f"Consumer error: {msg.error()}")
            event = json.loads(msg.value().decode('utf-8'))
            if (event.get('source') == expected_source
                    and event.get('event') == 'STAGE_COMPLETE'
                    and event.get('status') == 'SUCCESS'):
                return event
    finally:
        consumer.close()


if __name__ == '__main__':
    command, bootstrap, topic = sys.argv[1:4]
    if command == 'publish':
        producer_config = {
            'bootstrap.servers': bootstrap,
            'client.id': 'ingest-pipeline'
        }
        producer = Producer(producer_config)
        publish_stage_complete(
            producer,
            topic=topic,
            stage_name='bronze_ingest',
            source_name='OrdersDB',
            records_processed=14823
        )
    elif command == 'wait':
        consumer_config = {
            'bootstrap.servers': bootstrap,
            'group.id': sys.argv[4],
            'auto.offset.reset': 'latest'
        }
        consumer = Consumer(consumer_config)
        event = wait_for_stage(consumer, topic, 'OrdersDB')
        print(f"Bronze ingest done. {event['records']} records. Starting risk analysis.", flush=True)
