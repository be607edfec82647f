// Review page: one pair at a time, keyboard verdicts. A verdict counts as given only when the server
// answered 200 (it answers after the record is durable); until then keys are ignored and the request
// is retried with the same id, so a restarted server neither loses nor double-counts it.
"use strict";
const S = {keys: [], verdicts: {}, index: 0, reasons: [], busy: false, reasonMode: false};
window.acked = [];  // verdicts the server acknowledged in this page (read by the browser test)
const $ = (id) => document.getElementById(id);

function newId() {
  return (crypto.randomUUID ? crypto.randomUUID() : Date.now() + "-" + Math.random().toString(16).slice(2));
}

function setStatus(state, text) { const s = $("status"); s.dataset.state = state; s.textContent = text; }

function showProgress(p) {
  $("progress").textContent = `${p.done} / ${p.total} done · ${p.y} correct · ${p.n} wrong · ${p.s} skipped`;
  $("progress").dataset.done = p.done;
  $("bar").firstElementChild.style.width = (100 * p.done / Math.max(1, p.total)) + "%";
}

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) throw new Error((await r.json()).error || r.status);
  return r.json();
}

async function show(i) {
  S.index = i;
  const done = i >= S.keys.length;
  $("done").style.display = done ? "block" : "none";
  $("item").style.display = done ? "none" : "grid";
  $("item").dataset.index = done ? -1 : i;
  if (done) { $("item").dataset.key = ""; return; }
  const it = await getJSON(`/api/item/${i}`);
  $("item").dataset.key = it.key;
  $("image").src = `/api/image/${i}.png`;
  $("task").textContent = it.task; $("subtype").textContent = it.subtype || "-";
  $("instruction").textContent = it.instruction; $("answer").textContent = it.answer;
  $("note").textContent = it.note || "";
  const ul = $("targets"); ul.innerHTML = "";
  if (!it.targets.length) ul.innerHTML = "<li><i>no target (the answer must be a refusal)</i></li>";
  for (const t of it.targets) {
    const li = document.createElement("li"); if (t.is_part) li.className = "part";
    li.innerHTML = `<span class="swatch" style="background:rgb(${t.colour.join(",")})"></span>`;
    li.append(t.label + (t.is_part ? " (parent: dashed outline)" : ""));
    ul.append(li);
  }
  $("given").textContent = it.verdict ? `your verdict: ${it.verdict}${it.reason ? " (" + it.reason + ")" : ""}` : "";
  if (i + 1 < S.keys.length) new Image().src = `/api/image/${i + 1}.png`;  // prefetch
}

function nextOpen(from) {
  for (let j = from; j < S.keys.length; j++) if (!S.verdicts[S.keys[j]]) return j;
  for (let j = 0; j < from; j++) if (!S.verdicts[S.keys[j]]) return j;
  return S.keys.length;
}

// POST until the server answers: 200 -> done; 4xx -> refused (shown, not retried); else retry.
async function post(url, body) {
  for (let attempt = 1; ; attempt++) {
    try {
      const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                  body: JSON.stringify(body)});
      const data = await r.json();
      if (r.ok) return data;
      if (r.status >= 400 && r.status < 500) { setStatus("error", "refused: " + data.error); return null; }
      setStatus("retrying", `not saved (${data.error}), retrying…`);
    } catch (e) {
      setStatus("retrying", `not saved: server unreachable, retrying (attempt ${attempt})…`);
    }
    await new Promise((res) => setTimeout(res, 700));
  }
}

async function give(verdict, reason) {
  const key = S.keys[S.index];
  if (!key) return;
  busy(true); setStatus("saving", "saving…");
  const vid = newId();
  const data = await post("/api/verdict", {key, verdict, reason: reason || null, vid});
  if (data) {
    S.verdicts[key] = {verdict, reason};
    window.acked.push({key, verdict, reason: reason || null, vid, seq: data.record.seq});
    setStatus("saved", `saved #${data.record.seq}`);
    showProgress(data.progress);
    await show(nextOpen(S.index + 1));
  }
  busy(false);
}

// Keys are ignored while a verdict is on its way or the next pair loads (body[data-idle] says when not).
function busy(on) { S.busy = on; document.body.dataset.idle = on ? "0" : "1"; }

async function undo() {
  busy(true); setStatus("saving", "undoing…");
  const data = await post("/api/undo", {vid: newId()});
  if (data && !data.record) setStatus("saved", "nothing to undo");
  else if (data) {
    delete S.verdicts[data.record.key];
    setStatus("saved", `undone: ${data.record.key.slice(0, 12)}`);
    showProgress(data.progress);
    await show(S.keys.indexOf(data.record.key));
  }
  busy(false);
}

function reasonMode(on) { S.reasonMode = on; $("reasons").classList.toggle("open", on); }

document.addEventListener("keydown", (e) => {
  if (S.busy || e.ctrlKey || e.metaKey || e.altKey) return;
  if (S.reasonMode) {
    const n = parseInt(e.key, 10);
    if (e.key === "Escape") reasonMode(false);
    else if (n >= 1 && n <= S.reasons.length) { reasonMode(false); give("n", S.reasons[n - 1]); }
    return;
  }
  const k = e.key.toLowerCase();
  if (k === "y") give("y");
  else if (k === "s") give("s");
  else if (k === "n" && S.index < S.keys.length) reasonMode(true);
  else if (k === "u") undo();
});

(async function start() {
  const st = await getJSON("/api/state");
  Object.assign(S, {keys: st.keys, reasons: st.reasons});
  for (const [k, v] of Object.entries(st.verdicts)) S.verdicts[k] = v;
  $("title").textContent = `${st.name} · v${st.version} · auditor ${st.auditor}`;
  const ol = $("reason-list");
  st.reasons.forEach((r, i) => { const li = document.createElement("li"); li.textContent = r.replace(/_/g, " ");
                                 li.title = `key ${i + 1}`; ol.append(li); });
  showProgress(st.progress);
  await show(st.next);
  busy(false);
  document.body.dataset.ready = "1";
})();
