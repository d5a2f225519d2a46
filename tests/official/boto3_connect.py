"""AWS's Python SDK (boto3) against the Connect simulator.

Run by tests/tests/official_clients.rs with the simulator's endpoint in the environment.
It drives a chat the way the bridge does, through botocore's own request signing,
serialisation, error parsing and retries: start a chat (twice with one ClientToken),
connect the customer, send, read the transcript page by page, attach a file through the
presigned upload with exactly the headers Connect names, read an agent's file, and meet
Connect's errors (an unknown instance, a bad token, throttling, a disconnected
participant). Any difference botocore notices fails the run with the reason.
"""

import json
import os
import urllib.request
import uuid

import boto3
import botocore.config
import requests
from botocore.exceptions import ClientError

ENDPOINT = os.environ["CONNECT_ENDPOINT"]
INSTANCE = os.environ["CONNECT_INSTANCE_ID"]
FLOW = "11111111-2222-3333-4444-555555555555"
WAIT = 10


def client(service, **config):
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=botocore.config.Config(connect_timeout=WAIT, read_timeout=WAIT, **config),
    )


def desk(path, payload=None):
    """The simulator's agent desk and fault switches (test equipment, not Connect's API)."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        ENDPOINT + path, data=data, headers={"content-type": "application/json"}
    )
    body = urllib.request.urlopen(request, timeout=WAIT).read()
    return json.loads(body) if body else None


def expect(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def error_of(call, **kwargs):
    try:
        call(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{call.__name__} succeeded where Connect refuses")


def main():
    connect = client("connect")
    participant = client("connectparticipant")

    # One ClientToken, one chat: a retried StartChatContact gets the same contact.
    token = str(uuid.uuid4())
    start = dict(
        InstanceId=INSTANCE,
        ContactFlowId=FLOW,
        ParticipantDetails={"DisplayName": "Ana"},
        ClientToken=token,
        SupportedMessagingContentTypes=["text/plain", "text/markdown"],
    )
    chat = connect.start_chat_contact(**start)
    again = connect.start_chat_contact(**start)
    expect("contact of a repeated ClientToken", again["ContactId"], chat["ContactId"])
    for key in ("ContactId", "ParticipantId", "ParticipantToken"):
        if not chat.get(key):
            raise AssertionError(f"StartChatContact answered no {key}: {chat}")
    expect(
        "unknown instance",
        error_of(
            connect.start_chat_contact,
            **{**start, "InstanceId": str(uuid.uuid4()), "ClientToken": str(uuid.uuid4())},
        ),
        ("ResourceNotFoundException", 404),
    )

    conn = participant.create_participant_connection(
        Type=["WEBSOCKET", "CONNECTION_CREDENTIALS"],
        ParticipantToken=chat["ParticipantToken"],
        ConnectParticipant=True,
    )
    if not conn["Websocket"]["Url"].startswith(("ws://", "wss://")):
        raise AssertionError(f"websocket URL {conn['Websocket']['Url']!r}")
    credentials = conn["ConnectionCredentials"]["ConnectionToken"]

    # Messages, each once however often its ClientToken is sent.
    ids = []
    for n in range(3):
        sent_token = str(uuid.uuid4())
        first = participant.send_message(
            ContentType="text/plain",
            Content=f"hello {n}",
            ClientToken=sent_token,
            ConnectionToken=credentials,
        )
        repeat = participant.send_message(
            ContentType="text/plain",
            Content=f"hello {n}",
            ClientToken=sent_token,
            ConnectionToken=credentials,
        )
        expect("message id of a repeated ClientToken", repeat["Id"], first["Id"])
        ids.append(first["Id"])
    desk(f"/agent/chats/{chat['ContactId']}/accept", {})
    desk(f"/agent/chats/{chat['ContactId']}/messages", {"content": "How can I help?"})

    # The transcript, two items a page, oldest first, followed by NextToken to its end.
    items, next_token = [], None
    while True:
        page = dict(
            ConnectionToken=credentials,
            ScanDirection="FORWARD",
            SortOrder="ASCENDING",
            MaxResults=2,
        )
        if next_token:
            page["NextToken"] = next_token
        got = participant.get_transcript(**page)
        expect("transcript's contact", got["InitialContactId"], chat["ContactId"])
        if len(got["Transcript"]) > 2:
            raise AssertionError(f"a page of {len(got['Transcript'])} items for MaxResults 2")
        items += got["Transcript"]
        next_token = got.get("NextToken")
        if not next_token:
            break
    messages = [(i["ParticipantRole"], i["Content"]) for i in items if i["Type"] == "MESSAGE"]
    expect(
        "messages in the transcript",
        messages,
        [
            ("CUSTOMER", "hello 0"),
            ("CUSTOMER", "hello 1"),
            ("CUSTOMER", "hello 2"),
            ("AGENT", "How can I help?"),
        ],
    )
    expect(
        "customer message ids",
        [
            i["Id"]
            for i in items
            if i.get("ParticipantRole") == "CUSTOMER" and i["Type"] == "MESSAGE"
        ],
        ids,
    )
    if len({i["Id"] for i in items}) != len(items):
        raise AssertionError("an item appears on two pages")

    # A customer's file: upload with exactly the headers Connect names, then complete.
    pdf = b"%PDF-1.4\n" + os.urandom(2048) + b"\n%%EOF\n"
    upload = participant.start_attachment_upload(
        ContentType="application/pdf",
        AttachmentSizeInBytes=len(pdf),
        AttachmentName="invoice.pdf",
        ClientToken=str(uuid.uuid4()),
        ConnectionToken=credentials,
    )
    meta = upload["UploadMetadata"]
    extra = dict(meta["HeadersToInclude"], **{"x-amz-meta-extra": "1"})
    expect(
        "upload with a header more",
        requests.put(meta["Url"], data=pdf, headers=extra, timeout=WAIT).status_code,
        403,
    )
    expect(
        "upload",
        requests.put(
            meta["Url"], data=pdf, headers=meta["HeadersToInclude"], timeout=WAIT
        ).status_code,
        200,
    )
    participant.complete_attachment_upload(
        AttachmentIds=[upload["AttachmentId"]],
        ClientToken=str(uuid.uuid4()),
        ConnectionToken=credentials,
    )
    got = participant.get_attachment(
        AttachmentId=upload["AttachmentId"], ConnectionToken=credentials
    )
    expect("the file as Connect gives it back", requests.get(got["Url"], timeout=WAIT).content, pdf)
    expect(
        "a file type the instance does not allow",
        error_of(
            participant.start_attachment_upload,
            ContentType="application/x-msdownload",
            AttachmentSizeInBytes=10,
            AttachmentName="setup.exe",
            ClientToken=str(uuid.uuid4()),
            ConnectionToken=credentials,
        ),
        ("ValidationException", 400),
    )

    # Errors botocore must recognise by code, and throttling it must retry by itself.
    expect(
        "a bad connection token",
        error_of(
            participant.send_message,
            ContentType="text/plain",
            Content="x",
            ConnectionToken="not-a-token",
        ),
        ("AccessDeniedException", 403),
    )
    desk("/faults/throttle", {"count": 1, "operations": None})
    once = client("connectparticipant", retries={"total_max_attempts": 1, "mode": "standard"})
    expect(
        "throttled, not retried",
        error_of(
            once.send_message, ContentType="text/plain", Content="x", ConnectionToken=credentials
        ),
        ("ThrottlingException", 429),
    )
    desk("/faults/throttle", {"count": 2, "operations": None})
    retried = participant.send_message(
        ContentType="text/plain", Content="after throttling", ConnectionToken=credentials
    )
    if retried["ResponseMetadata"]["RetryAttempts"] != 2:
        raise AssertionError(
            f"botocore did not retry the throttled call: {retried['ResponseMetadata']}"
        )

    participant.disconnect_participant(ClientToken=str(uuid.uuid4()), ConnectionToken=credentials)
    expect(
        "sending after the customer left",
        error_of(
            participant.send_message,
            ContentType="text/plain",
            Content="x",
            ConnectionToken=credentials,
        ),
        ("AccessDeniedException", 403),
    )
    print("boto3: all checks passed")


if __name__ == "__main__":
    main()
