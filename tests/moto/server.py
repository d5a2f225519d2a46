"""moto in server mode for the AWS contract and end-to-end tests, on 127.0.0.1.

Prints the port it listens on as the first line of stdout, then serves until its stdin
closes (the test process that started it exited, however it died).

Four places where moto 5 departs from SQS FIFO and DynamoDB as AWS documents them are
brought in line here, so the contract suites test the real behaviour rather than the
emulator's:

* "Amazon SQS continues to keep track of the message deduplication ID even after the
  message has been received and deleted" (SQS Developer Guide, "Using the message
  deduplication ID"). moto forgets the id once the message is deleted.
* A long poll returns a FIFO group's next message as soon as the group's head is deleted
  or made visible. moto decides which groups are blocked once, when the poll starts, and
  then spins on the CPU for the whole wait while a blocked group has messages.
* A DynamoDB conditional write is atomic. moto checks the condition and then writes
  without a lock, so two racing writers can both succeed; its writes are serialised here.
* ChangeMessageVisibility works only on a message in flight, with its latest receipt:
  SQS answers MessageNotInflight once the visibility timeout ran out, and refuses a
  receipt from an earlier receive. moto takes any receipt the message ever had, at any
  time: a worker whose delivery lapsed could hide the group's head again while the group
  was no longer blocked, and let a later message of the group go first.
"""

import functools
import sys
import threading

from moto.core.utils import unix_time
from moto.dynamodb.models import DynamoDBBackend
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.sqs import models
from moto.sqs.exceptions import ReceiptHandleIsInvalid, SQSException
from moto.sqs.models import DEDUPLICATION_TIME_IN_SECONDS, Queue, SQSBackend

# How often a waiting long poll re-checks visibility timeouts that ran out on their own.
RECHECK_SECONDS = 0.02

_original_add = Queue.add_message
_original_delete = Queue.delete_message
_original_change_visibility = SQSBackend.change_message_visibility


def _remembered(queue):
    if not hasattr(queue, "_waconnect_dedup"):
        queue._waconnect_dedup = {}
    return queue._waconnect_dedup


# Every change to a queue holds its lock (a re-entrant Condition), so a receive never
# sees a message half deleted or hands one out twice.


def add_message(self, message):
    with self._messages_lock:
        if self.fifo_queue and message.deduplication_id:
            seen = _remembered(self)
            now = message.sent_timestamp / 1000
            for key, at in list(seen.items()):
                if now - at >= DEDUPLICATION_TIME_IN_SECONDS:
                    del seen[key]
            if message.deduplication_id in seen:
                return
            seen[message.deduplication_id] = now
        _original_add(self, message)


def delete_message(self, receipt_handle):
    with self._messages_lock:
        _original_delete(self, receipt_handle)
        self._messages_lock.notify_all()


class MessageNotInflight(SQSException):
    def __init__(self):
        super().__init__("MessageNotInflight", "The message referred to isn't in flight.")


def change_message_visibility(self, queue_name, receipt_handle, visibility_timeout):
    queue = self.get_queue(queue_name)
    with queue._messages_lock:
        for message in queue._messages:
            if not message.had_receipt_handle(receipt_handle):
                continue
            if receipt_handle != message.receipt_handle:
                raise ReceiptHandleIsInvalid()
            if message.visible or message not in queue.pending_messages:
                raise MessageNotInflight()
            break
        _original_change_visibility(self, queue_name, receipt_handle, visibility_timeout)
        queue._messages_lock.notify_all()


def receive_message(
    self,
    queue_name,
    count,
    wait_seconds_timeout,
    visibility_timeout,
    message_attribute_names=None,
):
    """moto's receive, re-deciding blocked groups on every pass and sleeping between them."""
    if message_attribute_names is None:
        message_attribute_names = []
    queue = self.get_queue(queue_name)
    polling_end = unix_time() + wait_seconds_timeout
    while True:
        result = []
        with queue._messages_lock:
            for message in list(queue.pending_messages):
                if message.visible:
                    queue.pending_messages.discard(message)
            blocked = set(queue.pending_message_groups) if queue.fifo_queue else set()
            to_dlq = []
            for message in queue.messages:
                if message.group_id and message.group_id in blocked:
                    continue
                if (
                    queue.dead_letter_queue is not None
                    and queue.redrive_policy
                    and message.approximate_receive_count
                    >= queue.redrive_policy["maxReceiveCount"]
                ):
                    to_dlq.append(message)
                    # Later messages of the group wait until this one has moved.
                    if message.group_id:
                        blocked.add(message.group_id)
                    continue
                queue.pending_messages.add(message)
                message.mark_received(visibility_timeout=visibility_timeout)
                copy = models.deepcopy(message)
                models._filter_message_attributes(copy, message_attribute_names)
                result.append(copy)
                if len(result) >= count:
                    break
            for message in to_dlq:
                queue._messages.remove(message)
        for message in to_dlq:
            queue.dead_letter_queue.add_message(message)
        if to_dlq and not result:
            continue
        remaining = polling_end - unix_time()
        if result or remaining <= 0:
            return result
        with queue._messages_lock:
            queue._messages_lock.wait(min(remaining, RECHECK_SECONDS))


_dynamodb_writes = threading.Lock()


def _serialised(write):
    @functools.wraps(write)
    def locked(*args, **kwargs):
        with _dynamodb_writes:
            return write(*args, **kwargs)

    return locked


for _name in ("put_item", "update_item", "delete_item", "transact_write_items"):
    setattr(DynamoDBBackend, _name, _serialised(getattr(DynamoDBBackend, _name)))

Queue.add_message = add_message
Queue.delete_message = delete_message
SQSBackend.change_message_visibility = change_message_visibility
SQSBackend.receive_message = receive_message


def main():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    # Serve until the parent goes away and our stdin reaches end of file.
    sys.stdin.read()


if __name__ == "__main__":
    main()
