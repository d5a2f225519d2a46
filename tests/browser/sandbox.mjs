// The sandbox in a real browser: the customer types, the agent accepts and replies, and
// the phone shows the reply with its read tick; the agent desk shows the read receipt.
// Then files both ways: the customer's photo, voice note and location reach the agent
// (the voice note converted to WAV), the agent's PDF reaches the phone. Then the same
// customer writes to the second business number (its own chat on both sides), and the
// agent starts a conversation with a template.
// Usage: node sandbox.mjs <waconnect-sandbox binary> <screenshot.png>
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';

const [binary, screenshot] = process.argv.slice(2);
const sandbox = spawn(binary, [], {
  env: { ...process.env, WACONNECT_SANDBOX_BIND: '127.0.0.1:0', RUST_LOG: 'warn', WACONNECT_LOG_FORMAT: 'json' },
  stdio: ['ignore', 'pipe', 'inherit'],
});
const url = await new Promise((resolve, reject) => {
  let seen = '';
  const timer = setTimeout(() => reject(new Error('the sandbox did not print its URL: ' + seen)), 60000);
  sandbox.stdout.on('data', (chunk) => {
    seen += chunk;
    const m = seen.match(/running: (http:\/\/127\.0\.0\.1:\d+)/);
    if (m) { clearTimeout(timer); resolve(m[1]); }
  });
  sandbox.on('exit', (code) => reject(new Error('the sandbox exited with ' + code)));
});
// The sandbox's warnings and errors (its JSON log lines on stdout), shown if the test fails.
const warnings = [];
sandbox.stdout.on('data', (chunk) => {
  for (const line of chunk.toString().split('\n')) if (/"level":"(WARN|ERROR)"/.test(line)) warnings.push(line);
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
let page;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  // What the page said, for a failure's diagnosis.
  page.on('console', (m) => {
    if ((m.type() === 'warning' || m.type() === 'error') && !m.text().startsWith('Failed to load resource')) console.error('page:', m.text());
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) console.error('page: HTTP', r.status(), r.url());
  });
  await page.goto(url);
  await page.fill('#phone-input', 'Hi! My order #1042 has not arrived yet.');
  await page.click('#phone-send');
  await page.locator('#phone-messages .msg.out[data-status="sent"]').waitFor({ timeout: 20000 });

  await page.locator('#chats .chat button.accept').first().click({ timeout: 20000 });
  await page.locator('#transcript .msg.customer', { hasText: 'order #1042' }).waitFor({ timeout: 20000 });
  await page.waitForSelector('#agent-input:not([disabled])', { timeout: 20000 });
  // The agent has the chat open: the customer's message is read, and turns blue on the phone.
  await page.locator('#transcript .msg.customer[data-read="true"]', { hasText: 'order #1042' }).waitFor({ timeout: 20000 });
  await page.locator('#phone-messages .msg.out[data-status="read"]', { hasText: 'order #1042' }).waitFor({ timeout: 20000 });
  // The agent types: the phone says so.
  await page.fill('#agent-input', 'Sorry about that! It ships today, tracking number follows.');
  await page.locator('#phone-typing', { hasText: 'typing' }).waitFor({ timeout: 20000 });
  await page.click('#agent-send');

  const reply = page.locator('#phone-messages .msg.in', { hasText: 'It ships today' });
  await reply.waitFor({ timeout: 20000 });
  await page.locator('#phone-messages .msg.in[data-status="read"]', { hasText: 'It ships today' }).waitFor({ timeout: 20000 });
  const tick = await reply.locator('.tick').getAttribute('class');
  if (!tick.includes('read')) throw new Error('the reply has no read tick: ' + tick);
  await page.locator('#transcript .msg.agentmsg[data-receipt="read"]').waitFor({ timeout: 20000 });
  // The customer swipes to reply to the agent's message: the agent sees which.
  await reply.click();
  await page.fill('#phone-input', 'Great, thank you!');
  await page.click('#phone-send');
  await page.locator('#transcript .msg.customer', { hasText: "In reply to the agent's message: \"Sorry about that!" }).waitFor({ timeout: 20000 });
  // A flow's menu: a WhatsApp list on the phone; the customer's choice reaches the chat.
  await page.click('#agent-menu');
  await page.locator('#transcript .msg[data-menu="true"]', { hasText: 'What can we help with?' }).waitFor({ timeout: 20000 });
  await page.locator('#phone-messages .msg.in .choices button', { hasText: 'Return an item' }).click({ timeout: 20000 });
  await page.locator('#transcript .msg.customer', { hasText: 'Return an item' }).waitFor({ timeout: 20000 });
  await page.waitForFunction(() => document.getElementById('stats').textContent.includes('1 active'), null, { timeout: 10000 });

  // A photo of the parcel, with a caption.
  const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR4nGM4YSNHEmIY1TCqYfhqAADXFCIQU/5f4AAAAABJRU5ErkJggg==', 'base64');
  await page.fill('#phone-input', 'This is the box I got');
  await page.setInputFiles('#phone-file', { name: 'parcel.png', mimeType: 'image/png', buffer: png });
  await page.locator('#transcript .msg.customer[data-file="image/png"] img').waitFor({ timeout: 20000 });
  await page.locator('#transcript .msg.customer', { hasText: 'This is the box I got' }).waitFor({ timeout: 20000 });
  // A voice note (Opus): the agent gets a WAV Connect can play.
  await page.click('#phone-voice');
  await page.locator('#transcript .msg.customer[data-file="audio/wav"] audio').waitFor({ timeout: 30000 });
  await page.click('#phone-location');
  await page.locator('#transcript .msg.customer', { hasText: 'Location: London Eye' }).waitFor({ timeout: 20000 });
  // The agent sends the returns label as a PDF.
  const pdf = Buffer.from('%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n');
  await page.setInputFiles('#agent-file', { name: 'returns-label.pdf', mimeType: 'application/pdf', buffer: pdf });
  await page.locator('#phone-messages .msg.in[data-file="application/pdf"] a.file', { hasText: 'returns-label.pdf' }).waitFor({ timeout: 30000 });
  await page.screenshot({ path: screenshot });
  // The same customer writes to the other business number: a second chat, its own
  // brand, and the reply arrives in that business's chat on the phone, not Acme's.
  await page.click('#phone-businesses button[data-number="whatsapp:+442071838750"]');
  await page.fill('#phone-input', 'Hello Globex, a question about my invoice');
  await page.click('#phone-send');
  await page.locator('#chats .chat[data-brand="Globex"] button.accept').click({ timeout: 20000 });
  await page.locator('#transcript .msg.customer', { hasText: 'about my invoice' }).waitFor({ timeout: 20000 });
  await page.waitForSelector('#agent-input:not([disabled])', { timeout: 20000 });
  await page.fill('#agent-input', 'Globex billing here, happy to help.');
  await page.click('#agent-send');
  await page.locator('#phone-messages .msg.in', { hasText: 'Globex billing here' }).waitFor({ timeout: 20000 });
  await page.click('#phone-businesses button[data-number="whatsapp:+14155238886"]');
  await page.locator('#phone-messages .msg.in', { hasText: 'It ships today' }).waitFor({ timeout: 20000 });
  if (await page.locator('#phone-messages .msg', { hasText: 'Globex billing here' }).count() !== 0) {
    throw new Error("Globex's reply shows in Acme's chat");
  }
  // The agent starts a conversation with another customer: the template reaches their
  // phone, and the agent sees it in the new chat.
  await page.fill('#agent-start-number', 'whatsapp:+15551230002');
  await page.click('#agent-start');
  await page.locator('#transcript .msg.notice', { hasText: 'this is the support team' }).waitFor({ timeout: 20000 });
  await page.fill('#phone-number', 'whatsapp:+15551230002');
  await page.locator('#phone-messages .msg.in', { hasText: 'Hi there, this is the support team' }).waitFor({ timeout: 20000 });
  console.log('browser test passed; screenshot at ' + screenshot);
} catch (e) {
  failed = true;
  console.error('browser test failed:', e.message);
  for (const line of warnings) console.error('sandbox:', line);
  if (page) {
    for (const id of ['stats', 'chats', 'transcript', 'phone-messages']) {
      const text = await page.locator('#' + id).innerText().catch(() => '(unreadable)');
      console.error(`--- #${id}:\n${text}`);
    }
  }
} finally {
  await browser.close();
  sandbox.kill('SIGTERM');
}
process.exit(failed ? 1 : 0);
