//! CPU cost of the webhook's per-request work on a ~2 KB WhatsApp body: signature check, parse
//! into envelopes, and building the SQS message (JSON body, group and dedup ids).
//! Run: `make bench` (or `cargo bench -p shared --bench ingest`).

use std::hint::black_box;

// The same allocator as the function binaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use shared::meta::parse_webhook;
use shared::ordering::OrderingScope;
use shared::signature::SignatureKey;
use shared::wire::inbound_message;

/// A realistic single-message WhatsApp webhook padded to about 2 KB with a referral block and
/// a long text, as Meta would send it (compact JSON, non-ASCII escaped).
fn body_2kb() -> Vec<u8> {
    let text = "Hola, soy Ana (ana@ejemplo.mx). Quiero una cotizaci\u{f3}n para el departamento de dos rec\u{e1}maras que vi en su anuncio; \u{bf}tienen disponibilidad para marzo? Tambi\u{e9}n me interesa saber si aceptan mascotas y cu\u{e1}l es el dep\u{f3}sito. ".repeat(5);
    let v = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Ana Ruiz"}, "wa_id": "5215512345678", "user_id": "MX.8812736450012"}],
        "messages": [{"from": "5215512345678", "from_user_id": "MX.8812736450012",
            "id": "wamid.HBgNNTIxNTUxMjM0NTY3OBUCABIYFjNFQjBDMDAwQTFCMkMzRDRFNUY2AA==",
            "timestamp": "1767225600", "type": "text", "text": {"body": text},
            "referral": {"source_url": "https://fb.me/3cr4Wqqkb", "source_id": "120212345678901234", "source_type": "ad",
                "headline": "Departamentos en renta", "body": "Dos recamaras desde $18,000", "media_type": "image",
                "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPaOdRMXP"}}]
    }}]}]});
    // serde_json escapes nothing but control characters; Meta escapes all non-ASCII.
    let compact = serde_json::to_string(&v).unwrap();
    let mut escaped = String::with_capacity(compact.len() * 2);
    for c in compact.chars() {
        if c.is_ascii() {
            escaped.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                escaped.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    escaped.into_bytes()
}

fn ingest(c: &mut Criterion) {
    let body = body_2kb();
    // Kept for the Node comparison script (infra/bench/node-ingest.js).
    let out = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/ingest-body-2kb.json"
    );
    let _ = std::fs::write(out, &body);
    let key = SignatureKey::new(b"a-32-byte-meta-app-secret-value!");
    let sig = key.sign(&body);
    let mut g = c.benchmark_group("webhook_2kb");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("verify_signature", |b| {
        b.iter(|| key.verify(black_box(&body), Some(&sig)).unwrap())
    });
    g.bench_function("hmac_rustcrypto_for_comparison", |b| {
        use hmac::{Hmac, Mac};
        b.iter(|| {
            let mut m =
                Hmac::<sha2::Sha256>::new_from_slice(b"a-32-byte-meta-app-secret-value!").unwrap();
            m.update(black_box(&body));
            black_box(m.finalize())
        })
    });
    g.bench_function("parse", |b| {
        b.iter(|| {
            parse_webhook(black_box(&body), "c0ffee00-0000-4000-8000-000000000000", 0).unwrap()
        })
    });
    g.bench_function("verify_parse_envelope", |b| {
        b.iter(|| {
            key.verify(black_box(&body), Some(&sig)).unwrap();
            let parsed =
                parse_webhook(black_box(&body), "c0ffee00-0000-4000-8000-000000000000", 0).unwrap();
            let msgs: Vec<_> = parsed
                .inbound
                .into_iter()
                .map(|e| inbound_message(e, OrderingScope::ChannelAccount))
                .collect();
            black_box(msgs)
        })
    });
    g.finish();
    eprintln!("body size: {} bytes", body.len());
}

criterion_group!(benches, ingest);
criterion_main!(benches);
