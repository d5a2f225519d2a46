// Amazon's own chat client, amazon-connect-chatjs, as a customer on the Connect
// simulator, in headless Chromium: it creates its connection, subscribes on the
// participant websocket, sends a message and a typing event, receives the agent's
// message and typing, reads the transcript, sends a file and downloads the agent's,
// reconnects by itself when the socket drops, and sees the chat end. If chatjs cannot tell
// the simulator from Connect here, neither should the relay's own websocket client.
// Usage: node chatjs.mjs <Connect simulator endpoint> <instance id>
import { chromium } from 'playwright-core';
import { fileURLToPath } from 'node:url';

const [endpoint, instance] = process.argv.slice(2);
const bundle = fileURLToPath(new URL('node_modules/amazon-connect-chatjs/dist/amazon-connect-chat.js', import.meta.url));
const WAIT = 15000;

async function call(method, path, body) {
  const r = await fetch(endpoint + path, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT),
  });
  if (!r.ok) throw new Error(`${method} ${path}: HTTP ${r.status} ${await r.text()}`);
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

async function until(what, check) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const got = await check();
    if (got) return got;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${WAIT} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// StartChatContact, as the bridge's relay calls it (the simulator does not check SigV4).
const chat = await call('PUT', '/contact/chat', {
  InstanceId: instance,
  ContactFlowId: '11111111-2222-3333-4444-555555555555',
  ParticipantDetails: { DisplayName: 'Ana' },
  SupportedMessagingContentTypes: ['text/plain', 'text/markdown'],
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  const page = await browser.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) console.error('page:', m.text());
  });
  // A page on the simulator's own origin: chatjs's calls are then same-origin, as
  // Connect's CORS headers make them for a real site.
  await page.goto(endpoint + '/sim/stats');
  await page.addScriptTag({ path: bundle });
  await page.evaluate(async ({ chat, endpoint }) => {
    window.seen = { messages: [], typing: [], ended: false, events: [] };
    connect.ChatSession.setGlobalConfig({ region: 'us-east-1', endpoint });
    const session = connect.ChatSession.create({
      chatDetails: { ContactId: chat.ContactId, ParticipantId: chat.ParticipantId, ParticipantToken: chat.ParticipantToken },
      options: { region: 'us-east-1' },
      type: connect.ChatSession.SessionTypes.CUSTOMER,
    });
    session.onMessage((e) => window.seen.messages.push(e.data));
    session.onTyping((e) => window.seen.typing.push(e.data));
    session.onEnded(() => { window.seen.ended = true; });
    session.onConnectionBroken(() => window.seen.events.push(['broken', Date.now()]));
    session.onConnectionEstablished(() => window.seen.events.push(['established', Date.now()]));
    const connected = await session.connect();
    if (!connected.connectSuccess) throw new Error('chatjs did not connect: ' + JSON.stringify(connected));
    window.session = session;
  }, { chat, endpoint });

  // The customer writes and types; the agent's desk sees both.
  await page.evaluate(() => window.session.sendMessage({ contentType: 'text/plain', message: 'Hello from chatjs' }));
  await page.evaluate(() => window.session.sendEvent({ contentType: 'application/vnd.amazonaws.connect.event.typing' }));
  await until('the customer\'s message in the transcript', async () =>
    (await call('GET', `/agent/chats/${chat.ContactId}/transcript`))
      .some((i) => i.Type === 'MESSAGE' && i.ParticipantRole === 'CUSTOMER' && i.Content === 'Hello from chatjs'));

  // The agent accepts, types and answers: chatjs hands both to the page.
  await call('POST', `/agent/chats/${chat.ContactId}/accept`, {});
  await call('POST', `/agent/chats/${chat.ContactId}/typing`, {});
  await call('POST', `/agent/chats/${chat.ContactId}/messages`, { content: 'How can I help?' });
  await until('the agent\'s message through chatjs', () => page.evaluate(() =>
    window.seen.messages.some((m) => m.Type === 'MESSAGE' && m.ParticipantRole === 'AGENT' && m.Content === 'How can I help?')));
  await until('the agent\'s typing through chatjs', () => page.evaluate(() =>
    window.seen.typing.some((t) => t.ParticipantRole === 'AGENT')));

  // The transcript as chatjs reads it: both messages, oldest first.
  const transcript = await page.evaluate(async () => {
    const r = await window.session.getTranscript({ maxResults: 15, sortOrder: 'ASCENDING', scanDirection: 'BACKWARD' });
    return r.data.Transcript.filter((i) => i.Type === 'MESSAGE').map((i) => [i.ParticipantRole, i.Content]);
  });
  const want = [['CUSTOMER', 'Hello from chatjs'], ['AGENT', 'How can I help?']];
  if (JSON.stringify(transcript) !== JSON.stringify(want)) {
    throw new Error(`chatjs's transcript: ${JSON.stringify(transcript)}, want ${JSON.stringify(want)}`);
  }

  // Files both ways. The customer's goes through chatjs's own upload (the presigned PUT
  // with the headers StartAttachmentUpload names); the agent's comes down through
  // chatjs's download (GetAttachment's URL).
  await page.evaluate(async () => {
    const pdf = new File([new Uint8Array(4096).fill(7)], 'invoice.pdf', { type: 'application/pdf' });
    await window.session.sendAttachment({ attachment: pdf });
  });
  await until('the customer\'s file in the transcript', async () =>
    (await call('GET', `/agent/chats/${chat.ContactId}/transcript`)).some((i) => i.Type === 'ATTACHMENT'
      && i.ParticipantRole === 'CUSTOMER' && i.Attachments?.[0]?.AttachmentName === 'invoice.pdf'));
  const manual = await fetch(`${endpoint}/agent/chats/${chat.ContactId}/files?name=manual.pdf&status=APPROVED`, {
    method: 'POST',
    headers: { 'content-type': 'application/pdf' },
    body: new Uint8Array(10000).fill(42),
    signal: AbortSignal.timeout(WAIT),
  });
  if (!manual.ok) throw new Error(`the agent's file: HTTP ${manual.status}`);
  const attachmentId = await until('the agent\'s file through chatjs', () => page.evaluate(() => {
    const item = window.seen.messages.find((m) => m.Type === 'ATTACHMENT' && m.ParticipantRole === 'AGENT'
      && m.Attachments?.[0]?.Status === 'APPROVED');
    return item?.Attachments[0].AttachmentId;
  }));
  const downloaded = await page.evaluate(async (attachmentId) => {
    const blob = await window.session.downloadAttachment({ attachmentId });
    const bytes = new Uint8Array(await blob.arrayBuffer());
    return { size: bytes.length, all42: bytes.every((b) => b === 42) };
  }, attachmentId);
  if (downloaded.size !== 10000 || !downloaded.all42) {
    throw new Error(`chatjs downloaded ${JSON.stringify(downloaded)} for the agent's 10000-byte file`);
  }

  // The websocket drops: chatjs reconnects by itself (a new CreateParticipantConnection),
  // the next message arrives on the new socket, and one sent meanwhile is in the
  // transcript, where a client looks for what it missed (Connect does not replay).
  const established = await page.evaluate(() => window.seen.events.filter(([e]) => e === 'established').length);
  await call('POST', '/faults/drop-sockets', { contact_id: chat.ContactId });
  await call('POST', `/agent/chats/${chat.ContactId}/messages`, { content: 'While you were away' });
  await until('chatjs reconnecting after the socket dropped', () => page.evaluate((before) =>
    window.seen.events.filter(([e]) => e === 'established').length > before, established));
  await call('POST', `/agent/chats/${chat.ContactId}/messages`, { content: 'Still there?' });
  await until('a message on the new socket, through chatjs', () => page.evaluate(() =>
    window.seen.messages.some((m) => m.Type === 'MESSAGE' && m.Content === 'Still there?')));
  const missed = await page.evaluate(async () => {
    const r = await window.session.getTranscript({ maxResults: 15, sortOrder: 'ASCENDING', scanDirection: 'BACKWARD' });
    return r.data.Transcript.some((i) => i.Type === 'MESSAGE' && i.Content === 'While you were away');
  });
  if (!missed) throw new Error('the message sent while the socket was down is not in the transcript');

  // The agent ends the chat: chatjs says so.
  await call('POST', `/agent/chats/${chat.ContactId}/end`, {});
  await until('the end of the chat through chatjs', () => page.evaluate(() => window.seen.ended));
  console.log('chatjs: all checks passed');
} catch (e) {
  failed = true;
  try { console.error('seen:', JSON.stringify(await browser.contexts()[0].pages()[0].evaluate(() => window.seen.events))); } catch {}
  try { console.error('sim:', JSON.stringify(await call('GET', '/sim/stats'))); } catch {}
  console.error('chatjs test failed:', e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
