/* AI agent web chat widget. One file, no framework.
 *
 *   <script src="https://<web chat URL>/widget.js" data-site-key="site_…" async></script>
 *
 * Optional attributes: data-api (endpoint base; default: where this file was loaded from),
 * data-title, data-identifier + data-identifier-hash (identity verification: the hash is
 * computed by the site's server with the site's identity secret).
 *
 * The visitor token is kept in localStorage, so a reload keeps the conversation. Messages go
 * out by POST with a client message id (a retry is the same message); replies come back by
 * long poll. Everything renders inside a shadow root so the page's CSS cannot break it. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__aiAgentChat) return;
  window.__aiAgentChat = true;
  var site = script.getAttribute("data-site-key");
  if (!site) { console.error("web chat: data-site-key is missing"); return; }
  var api = (script.getAttribute("data-api") || script.src.replace(/widget\.js(\?.*)?$/, "")).replace(/\/?$/, "/");
  var base = api + "v1/sites/" + encodeURIComponent(site) + "/";
  var title = script.getAttribute("data-title") || "Chat with us";
  var identifier = script.getAttribute("data-identifier");
  var identifierHash = script.getAttribute("data-identifier-hash");
  var storeKey = "aiAgentChat:" + site;

  var css = [
    ":host{all:initial;font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1b1b1f}",
    "*{box-sizing:border-box}",
    ".launcher{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;background:#1f6feb;color:#fff;display:flex;align-items:center;justify-content:center;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483000}",
    ".launcher:focus-visible,button:focus-visible,textarea:focus-visible{outline:3px solid #f0b400;outline-offset:2px}",
    ".panel{position:fixed;right:20px;bottom:88px;width:360px;max-width:calc(100vw - 24px);height:520px;max-height:calc(100vh - 110px);background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);display:flex;flex-direction:column;overflow:hidden;z-index:2147483000}",
    ".panel[hidden]{display:none}",
    "header{display:flex;align-items:center;justify-content:space-between;padding:12px 14px;background:#1f6feb;color:#fff;font-weight:600}",
    "header button{background:none;border:0;color:#fff;font-size:22px;cursor:pointer;line-height:1}",
    ".log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px;background:#f6f8fa}",
    ".msg{max-width:80%;padding:8px 12px;border-radius:14px;white-space:pre-wrap;word-wrap:break-word}",
    ".in{align-self:flex-end;background:#1f6feb;color:#fff;border-bottom-right-radius:4px}",
    ".out{align-self:flex-start;background:#fff;border:1px solid #d0d7de;border-bottom-left-radius:4px}",
    ".sending{opacity:.6}",
    ".typing{padding:0 14px 6px;font-size:13px;color:#57606a;background:#f6f8fa}",
    ".status{padding:6px 14px;font-size:13px;background:#fff8c5;color:#4d2d00}",
    ".typing[hidden],.status[hidden]{display:none}",
    "form{display:flex;gap:8px;padding:10px;border-top:1px solid #d0d7de;background:#fff}",
    "textarea{flex:1;resize:none;height:42px;padding:10px;border:1px solid #d0d7de;border-radius:8px;font:inherit}",
    "form button{border:0;border-radius:8px;background:#1f6feb;color:#fff;padding:0 14px;font:inherit;cursor:pointer}",
    "form button:disabled{background:#8c959f;cursor:default}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}",
    "@media (max-width:480px){.panel{right:0;bottom:0;width:100vw;max-width:100vw;height:100%;max-height:100%;border-radius:0}}"
  ].join("");

  var host = document.createElement("div");
  host.setAttribute("data-ai-agent-chat", "");
  var root = host.attachShadow({ mode: "open" });
  root.innerHTML =
    "<style>" + css + "</style>" +
    '<button class="launcher" type="button" aria-haspopup="dialog" aria-expanded="false" aria-label="Open chat"><svg aria-hidden="true" width="26" height="26" viewBox="0 0 24 24" fill="currentColor"><path d="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z"/></svg></button>' +
    '<section class="panel" role="dialog" aria-modal="false" aria-labelledby="t" hidden>' +
    '<header><span id="t"></span><button type="button" class="close" aria-label="Close chat">×</button></header>' +
    '<div class="log" role="log" aria-live="polite" aria-relevant="additions"></div>' +
    '<div class="typing" role="status" hidden>The agent is typing…</div>' +
    '<div class="status" role="alert" hidden></div>' +
    '<form><label class="sr" for="m">Your message</label>' +
    '<textarea id="m" rows="1" maxlength="4096" placeholder="Write a message…"></textarea>' +
    '<button type="submit">Send</button></form></section>';
  if (document.body) document.body.appendChild(host);
  else document.addEventListener("DOMContentLoaded", function () { document.body.appendChild(host); });

  var $ = function (s) { return root.querySelector(s); };
  var launcher = $(".launcher"), panel = $(".panel"), log = $(".log"), typing = $(".typing"),
      statusEl = $(".status"), form = $("form"), input = $("textarea"), sendBtn = $("form button");
  $("#t").textContent = title;

  var token = null, lastId = 0, polling = false, started = false, shown = {}, waitingReply = false;
  var mine = {}; // client message id -> the bubble shown before the server had the message

  function setStatus(text) { statusEl.textContent = text || ""; statusEl.hidden = !text; }
  function setTyping(on) { typing.hidden = !on; }
  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "m" + Date.now().toString(36) + Math.random().toString(36).slice(2, 12);
  }
  function render(m) {
    var key = String(m.id);
    if (shown[key]) return;
    shown[key] = true;
    if (m.client_message_id && mine[m.client_message_id]) {
      var own = mine[m.client_message_id];
      delete mine[m.client_message_id];
      own.classList.remove("sending");
      return own;
    }
    var el = document.createElement("div");
    el.className = "msg " + m.direction;
    el.textContent = m.text;
    el.setAttribute("aria-label", (m.direction === "in" ? "You: " : "Agent: ") + m.text);
    log.appendChild(el);
    log.scrollTop = log.scrollHeight;
    return el;
  }
  function call(method, path, body) {
    var headers = { "content-type": "application/json" };
    if (token) headers.authorization = "Bearer " + token;
    return fetch(base + path, { method: method, headers: headers, body: body ? JSON.stringify(body) : undefined })
      .then(function (r) {
        return r.text().then(function (t) {
          var data = {};
          try { data = t ? JSON.parse(t) : {}; } catch (e) { data = {}; }
          if (!r.ok) {
            var err = new Error(data.error || "http_" + r.status);
            err.status = r.status;
            err.retryAfter = parseInt(r.headers.get("retry-after") || "0", 10);
            throw err;
          }
          return data;
        });
      });
  }
  function startSession() {
    var body = {};
    try { var saved = localStorage.getItem(storeKey); if (saved) body.token = saved; } catch (e) { /* private mode */ }
    if (identifier && identifierHash) { body.identifier = identifier; body.identifier_hash = identifierHash; }
    return call("POST", "sessions", body).then(function (s) {
      token = s.token;
      try { localStorage.setItem(storeKey, token); } catch (e) { /* private mode */ }
    });
  }
  // Each long poll holds a server instance and a database connection: poll only while the
  // panel is open and the tab visible; reopening picks up what came meanwhile.
  function active() { return !panel.hidden && !document.hidden; }
  function sessionEnded() {
    token = null; started = false; session = null; polling = false;
    try { localStorage.removeItem(storeKey); } catch (x) { /* private mode */ }
    setStatus("Your session ended. Send a message to start a new one.");
  }
  function poll() {
    if (polling || !token) return;
    polling = true;
    (function next(delay) {
      setTimeout(function () {
        if (!active()) { polling = false; return; }
        call("GET", "messages?after=" + lastId + "&wait=20").then(function (r) {
          setStatus("");
          r.messages.forEach(function (m) {
            render(m);
            if (m.id > lastId) lastId = m.id;
            if (m.direction === "out") waitingReply = false;
          });
          // No reply may come (a person took over, no credits): once the server has our
          // messages and is no longer working on them, stop showing "typing".
          if (!r.pending && Object.keys(mine).length === 0) waitingReply = false;
          setTyping(r.pending || waitingReply);
          next(0);
        }, function (e) {
          if (e.status === 401) { sessionEnded(); return; }
          setStatus(navigator.onLine === false ? "You are offline. Messages will load when you are back." : "Connection problem, retrying…");
          next(Math.min(30000, (delay || 1000) * 2));
        });
      }, delay);
    })(0);
  }
  var session = null; // the session start in flight (a message typed meanwhile waits for it)
  function begin() {
    if (started) return session;
    started = true;
    setStatus("Connecting…");
    session = startSession().then(function () { setStatus(""); poll(); }, function (e) {
      started = false;
      setStatus(e.status === 429 ? "Too many chats right now; try again in a minute." : "The chat is unavailable right now. Please try again later.");
      throw e;
    });
    return session;
  }
  function send(text, id, attempt, bubble) {
    sendBtn.disabled = true;
    return call("POST", "messages", { client_message_id: id, text: text }).then(function () {
      sendBtn.disabled = false;
      bubble.classList.remove("sending");
      waitingReply = true;
      setTyping(true);
      setStatus("");
    }, function (e) {
      sendBtn.disabled = false;
      if (e.status === 401) {
        delete mine[id];
        bubble.remove();
        input.value = text;
        sessionEnded();
      } else if (e.status === 429) {
        delete mine[id];
        bubble.remove();
        input.value = text;
        setStatus("You are sending messages too fast. Try again in " + (e.retryAfter || 60) + " s.");
      } else if (e.status && e.status < 500) {
        delete mine[id];
        bubble.remove();
        input.value = text;
        setStatus(e.message === "message_too_long" ? "That message is too long." : "The message could not be sent.");
      } else if (attempt < 3) {
        setStatus("Connection problem, retrying…");
        setTimeout(function () { send(text, id, attempt + 1, bubble); }, 1000 * Math.pow(2, attempt));
      } else {
        delete mine[id];
        bubble.remove();
        input.value = text;
        setStatus(navigator.onLine === false ? "You are offline. Your message was not sent." : "The message could not be sent. Please try again.");
      }
    });
  }
  function open() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    launcher.setAttribute("aria-label", "Close chat");
    input.focus();
    if (token) poll(); else begin();
  }
  function close() {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-label", "Open chat");
    launcher.focus();
  }
  launcher.addEventListener("click", function () { if (panel.hidden) open(); else close(); });
  $(".close").addEventListener("click", close);
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") close(); });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit")); }
  });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text || sendBtn.disabled) return;
    input.value = "";
    var id = uuid();
    var bubble = render({ id: "local-" + id, direction: "in", text: text });
    bubble.classList.add("sending");
    mine[id] = bubble;
    (token ? Promise.resolve() : begin()).then(function () { send(text, id, 0, bubble); }, function () {
      delete mine[id];
      bubble.remove();
      input.value = text;
    });
  });
  window.addEventListener("online", function () { setStatus(""); });
  document.addEventListener("visibilitychange", function () { if (active()) poll(); });
  window.addEventListener("offline", function () { setStatus("You are offline."); });
})();
