// The Node equivalent of the `ingest` criterion benchmark, for comparison on the same machine:
// HMAC-SHA256 check of the raw body, JSON.parse, and building the per-message SQS body.
// Usage: node infra/bench/node-ingest.js BODY_FILE   (make bench writes BODY_FILE)
const crypto = require("node:crypto");
const fs = require("node:fs");

const body = fs.readFileSync(process.argv[2]);
const secret = "a-32-byte-meta-app-secret-value!";
const sig = "sha256=" + crypto.createHmac("sha256", secret).update(body).digest("hex");

function once() {
  const expected = Buffer.from(sig.slice(7), "hex");
  const actual = crypto.createHmac("sha256", secret).update(body).digest();
  if (!crypto.timingSafeEqual(expected, actual)) throw new Error("bad signature");
  const hook = JSON.parse(body);
  const out = [];
  for (const entry of hook.entry) {
    for (const change of entry.changes) {
      const v = change.value;
      for (const m of v.messages || []) {
        const c = (v.contacts || []).find((c) => c.wa_id === m.from) || {};
        const env = {
          v: 1, kind: "inbound_message", correlation_id: "c0ffee00-0000-4000-8000-000000000000",
          channel: "whatsapp", channel_account_id: v.metadata.phone_number_id,
          contact: { id: m.from_user_id || m.from, wa_id: m.from, display_name: c.profile && c.profile.name },
          provider_message_id: m.id, provider_timestamp_ms: Number(m.timestamp) * 1000,
          referral: m.referral, content: { type: "text", body: m.text && m.text.body }, raw: m,
        };
        const group = "whatsapp:" + env.channel_account_id;
        const dedup = crypto.createHash("sha256").update(`whatsapp:${env.channel_account_id}:${m.id}`).digest("hex");
        out.push({ body: JSON.stringify(env), group, dedup });
      }
    }
  }
  return out;
}

for (let i = 0; i < 20000; i++) once(); // warm up the JIT
const rounds = 5, n = 50000, results = [];
for (let r = 0; r < rounds; r++) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) once();
  results.push(Number(process.hrtime.bigint() - t0) / n / 1000);
}
results.sort((a, b) => a - b);
console.log(`node verify_parse_envelope: median ${results[2].toFixed(2)} µs (min ${results[0].toFixed(2)}, max ${results[4].toFixed(2)}) for ${body.length} bytes`);
