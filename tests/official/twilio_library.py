"""Twilio's own Python library (`twilio` on PyPI) against the Twilio simulator.

Run by tests/tests/official_clients.rs with the simulator's address and account in the
environment. Everything the bridge relies on is done the way an application using the
library does it: send (text and a file), fetch, list page by page with date filters, read
a message's media, check the account, and receive status callbacks and a customer's
webhook, each validated with the library's `RequestValidator`. Any difference the library
notices (a field it cannot parse, an error it does not recognise, a page it cannot follow,
a signature it rejects) fails the run with the reason.
"""

import datetime
import http.server
import json
import os
import queue
import threading
import urllib.parse
import urllib.request

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

API = os.environ["TWILIO_API"]  # the simulator, e.g. http://127.0.0.1:41234
ACCOUNT = os.environ["TWILIO_ACCOUNT_SID"]
TOKEN = os.environ["TWILIO_AUTH_TOKEN"]
SENDER = os.environ["TWILIO_SENDER"]
CUSTOMER = "whatsapp:+15550001001"
WAIT = 10.0
# A 1×1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2215f5d0000000049454e44ae426082"
)


class ToSimulator(TwilioHttpClient):
    """Sends the library's requests to the simulator instead of api.twilio.com: the
    library's documented way to change transport is a custom HTTP client."""

    def request(self, method, url, *args, **kwargs):
        parts = urllib.parse.urlsplit(url)
        return super().request(
            method, API + parts.path + ("?" + parts.query if parts.query else ""), *args, **kwargs
        )


class Webhooks(http.server.BaseHTTPRequestHandler):
    """Takes the simulator's signed webhooks; each is checked with the library's validator."""

    received = queue.Queue()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
        params = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        url = f"http://{self.headers['host']}{self.path}"
        valid = RequestValidator(TOKEN).validate(
            url, params, self.headers.get("x-twilio-signature", "")
        )
        Webhooks.received.put((self.path, params, valid))
        self.send_response(200)
        self.send_header("content-type", "text/xml")
        self.end_headers()
        self.wfile.write(b"<Response/>")

    def do_GET(self):
        # The file a message sends: Twilio fetches MediaUrl itself.
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args):
        pass


def expect(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def webhook(path_prefix, matches):
    """The next webhook under `path_prefix` that `matches`, after checking its signature."""
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=WAIT)
    while True:
        left = (deadline - datetime.datetime.now()).total_seconds()
        if left <= 0:
            raise AssertionError(f"no webhook on {path_prefix} within {WAIT} s")
        try:
            path, params, valid = Webhooks.received.get(timeout=left)
        except queue.Empty:
            raise AssertionError(f"no webhook on {path_prefix} within {WAIT} s") from None
        if not path.startswith(path_prefix):
            continue
        if not valid:
            raise AssertionError(
                f"RequestValidator rejects the simulator's signature on {path}: {params}"
            )
        if matches(params):
            return params


def control(path, payload):
    request = urllib.request.Request(
        API + path, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=WAIT).read()


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hooks = f"http://127.0.0.1:{server.server_address[1]}"
    client = Client(ACCOUNT, TOKEN, http_client=ToSimulator(timeout=WAIT))

    # The account, as a credentials check reads it.
    account = client.api.v2010.accounts(ACCOUNT).fetch()
    expect("account status", account.status, "active")

    # A customer writes first (WhatsApp's 24-hour window); the webhook carries a query
    # string, which the signature covers.
    control("/sim/webhook", {"url": f"{hooks}/incoming?tenant=a%20b&n=1"})
    control(
        "/phone/messages",
        {"from": CUSTOMER, "body": "Héllo & welcome? = yes", "profile_name": "Ana"},
    )
    incoming = webhook("/incoming", lambda p: p.get("From") == CUSTOMER)
    expect("incoming Body", incoming.get("Body"), "Héllo & welcome? = yes")
    expect("incoming To", incoming.get("To"), SENDER)

    # Text replies, each with a status callback whose signature the library must accept.
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    sent = []
    for n in range(5):
        m = client.messages.create(
            from_=SENDER, to=CUSTOMER, body=f"reply {n}", status_callback=f"{hooks}/status?n={n}"
        )
        if not (m.sid.startswith("SM") or m.sid.startswith("MM")) or len(m.sid) != 34:
            raise AssertionError(f"message SID {m.sid!r} is not Twilio's shape")
        if m.status not in ("queued", "accepted"):
            raise AssertionError(f"a new message's status is {m.status!r}")
        if not isinstance(m.date_created, datetime.datetime):
            raise AssertionError(f"date_created {m.date_created!r} did not parse as RFC 2822")
        expect("body", m.body, f"reply {n}")
        sent.append(m.sid)
    for n, sid in enumerate(sent):
        status = webhook(f"/status?n={n}", lambda p, sid=sid: p.get("MessageSid") == sid)
        if status.get("MessageStatus") not in ("sent", "delivered", "read", "queued"):
            raise AssertionError(f"status callback for {sid}: {status}")

    fetched = client.messages(sent[0]).fetch()
    expect("fetched sid", fetched.sid, sent[0])
    expect("fetched body", fetched.body, "reply 0")

    # Paging: the library follows next_page_uri until the list ends; newest first.
    listed = [m.sid for m in client.messages.list(from_=SENDER, to=CUSTOMER, page_size=2)]
    expect("listed, page by page", listed, list(reversed(sent)))
    in_range = client.messages.list(to=CUSTOMER, date_sent_after=before, page_size=3)
    expect("listed since a minute ago", sorted(m.sid for m in in_range), sorted(sent))
    tomorrow = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    expect("listed after tomorrow", client.messages.list(to=CUSTOMER, date_sent_after=tomorrow), [])
    page = client.messages.page(to=CUSTOMER, page_size=2)
    expect("first page", [m.sid for m in page], list(reversed(sent))[:2])
    second = page.next_page()
    expect("second page", [m.sid for m in second], list(reversed(sent))[2:4])

    # A file to the customer: Twilio fetches MediaUrl itself, and a fetch that fails or a
    # type WhatsApp refuses comes back as a failed status.
    media = client.messages.create(
        from_=SENDER,
        to=CUSTOMER,
        media_url=[f"{hooks}/photo.png"],
        status_callback=f"{hooks}/status?n=media",
    )
    expect("num_media", media.num_media, "1")
    status = webhook("/status?n=media", lambda p: p.get("MessageSid") == media.sid)
    if status.get("MessageStatus") not in ("sent", "delivered", "read"):
        raise AssertionError(f"the file was not delivered: {status}")

    # A photo from the customer, kept by Twilio: its media list, as the bridge reads it
    # before deleting Twilio's copy, and the delete itself.
    upload = urllib.request.Request(
        API + "/sim/media", data=PNG, headers={"content-type": "image/png"}
    )
    media_sid = json.loads(urllib.request.urlopen(upload, timeout=WAIT).read())["sid"]
    control(
        "/phone/messages",
        {"from": CUSTOMER, "body": "", "media": [{"content_type": "image/png", "sid": media_sid}]},
    )
    photo = webhook("/incoming", lambda p: p.get("NumMedia") == "1")
    expect("incoming MediaContentType0", photo.get("MediaContentType0"), "image/png")
    items = client.messages(photo["MessageSid"]).media.list()
    expect(
        "media items",
        [(m.sid, m.content_type, m.parent_sid) for m in items],
        [(media_sid, "image/png", photo["MessageSid"])],
    )
    if not photo["MediaUrl0"].endswith(items[0].uri.removesuffix(".json")):
        raise AssertionError(
            f"MediaUrl0 {photo['MediaUrl0']} is not the media's own URI {items[0].uri}"
        )
    expect("media deleted", client.messages(photo["MessageSid"]).media(media_sid).delete(), True)
    expect("media after the delete", client.messages(photo["MessageSid"]).media.list(), [])

    # Errors the library turns into TwilioRestException with Twilio's code.
    try:
        client.messages.create(from_=SENDER, to="whatsapp:+1", body="x")
        raise AssertionError("an invalid To was accepted")
    except TwilioRestException as e:
        expect("invalid To status", e.status, 400)
        expect("invalid To code", e.code, 21211)
    try:
        Client(ACCOUNT, "wrong-token", http_client=ToSimulator(timeout=WAIT)).messages.create(
            from_=SENDER, to=CUSTOMER, body="x"
        )
        raise AssertionError("a wrong auth token was accepted")
    except TwilioRestException as e:
        expect("wrong token status", e.status, 401)
        expect("wrong token code", e.code, 20003)
    try:
        client.messages("SM" + "0" * 32).fetch()
        raise AssertionError("an unknown message was found")
    except TwilioRestException as e:
        expect("unknown message status", e.status, 404)
        expect("unknown message code", e.code, 20404)

    server.shutdown()
    print("twilio library: all checks passed")


if __name__ == "__main__":
    main()
