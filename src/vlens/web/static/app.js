// vlens web app: three tabs over the JSON API (see /docs). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);

function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function api(url, options = {}) {
  const res = await fetch(url, options);
  let body = null;
  try { body = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) {
    const detail = body && body.detail ? body.detail : `HTTP ${res.status}`;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

// ---- tabs
document.querySelectorAll(".tab").forEach((tab) => {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    document.querySelectorAll(".panel").forEach((p) =>
      p.classList.toggle("active", p.id === "panel-" + tab.dataset.tab));
  });
});

// ---- server info: index size and which features work
let features = {};
api("/api/info").then((info) => {
  features = info.features;
  if (info.index) {
    const recall = info.index.kind === "flat" ? "exact" : `recall@10 ${info.index.recall_at_10}`;
    $("index-info").textContent = `${info.index.name}: ${info.index.count} images · ${info.index.model} · ` +
      `${info.index.kind} (${recall})`;
  } else {
    $("index-info").textContent = "no index loaded";
  }
  for (const [name, f] of Object.entries(features)) {
    if (!f.available) setStatus($(name + "-status"), `${name} is unavailable: ${f.detail}`, true);
  }
}).catch((e) => setStatus($("search-status"), "cannot reach the server: " + e.message, true));

// ---- search
function showResults(data, label) {
  const grid = $("results");
  grid.innerHTML = "";
  data.hits.forEach((hit, i) => {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.id = hit.id;
    const img = document.createElement("img");
    img.src = hit.thumb_url;
    img.alt = hit.path;
    img.loading = "lazy";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = `<div><span class="rank">#${i + 1}</span> <span class="score">${hit.score.toFixed(3)}</span></div>`;
    const path = document.createElement("div");
    path.className = "path";
    path.textContent = hit.path;
    path.title = hit.path;
    meta.appendChild(path);
    if (hit.caption) {
      const cap = document.createElement("div");
      cap.className = "cap";
      cap.textContent = hit.caption;
      meta.appendChild(cap);
    }
    card.append(img, meta);
    card.addEventListener("click", () => openLightbox(hit, i + 1));
    grid.appendChild(card);
  });
  setStatus($("search-status"), data.hits.length
    ? `${data.hits.length} results for ${label} in ${data.took_ms.toFixed(0)} ms (score = cosine similarity)`
    : "no results (the index is empty)");
}

$("search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const query = $("query").value.trim();
  if (!query) { setStatus($("search-status"), "type what you are looking for", true); return; }
  const btn = $("search-btn");
  btn.disabled = true;
  setStatus($("search-status"), "searching…");
  try {
    const data = await api("/api/search", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query, k: parseInt($("k").value, 10) || 12 }),
    });
    showResults(data, `“${query}”`);
  } catch (e) {
    setStatus($("search-status"), e.message, true);
  } finally {
    btn.disabled = false;
  }
});

$("query-image").addEventListener("change", async () => {
  const file = $("query-image").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  form.append("k", $("k").value || "12");
  setStatus($("search-status"), "searching by image…");
  try {
    showResults(await api("/api/search/image", { method: "POST", body: form }), file.name);
  } catch (e) {
    setStatus($("search-status"), e.message, true);
  }
  $("query-image").value = "";
});

function openLightbox(hit, rank) {
  $("lightbox-img").src = hit.url;
  $("lightbox-text").textContent = `#${rank} · ${hit.score.toFixed(4)} · ${hit.path}` +
    (hit.caption ? ` · “${hit.caption}”` : "");
  $("lightbox").hidden = false;
}
$("lightbox").addEventListener("click", () => { $("lightbox").hidden = true; });
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("lightbox").hidden = true; });

// ---- previews
function preview(input, img) {
  input.addEventListener("change", () => {
    const f = input.files[0];
    if (f) img.src = URL.createObjectURL(f);
  });
}
preview($("caption-file"), $("caption-preview"));
preview($("match-a"), $("preview-a"));
preview($("match-b"), $("preview-b"));

// ---- caption
$("caption-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("caption-file").files[0];
  if (!file) { setStatus($("caption-status"), "choose an image first", true); return; }
  const form = new FormData();
  form.append("file", file);
  form.append("strategy", $("strategy").value);
  form.append("top_k", $("top-k").value || "50");
  form.append("temperature", $("temperature").value || "1");
  form.append("n", $("n").value || "1");
  form.append("prompt", $("prompt").value);
  const btn = $("caption-btn");
  btn.disabled = true;
  setStatus($("caption-status"), "captioning…");
  try {
    const data = await api("/api/caption", { method: "POST", body: form });
    const list = $("captions");
    list.innerHTML = "";
    for (const c of data.captions) {
      const li = document.createElement("li");
      li.className = "caption";
      li.textContent = c.text || "(empty caption)";
      const lp = document.createElement("span");
      lp.className = "lp";
      lp.textContent = `log p ${c.logprob.toFixed(2)} (${c.mean_logprob.toFixed(2)}/token)`;
      li.appendChild(lp);
      list.appendChild(li);
    }
    setStatus($("caption-status"), `${data.model}, ${data.settings.strategy}, ${data.took_ms.toFixed(0)} ms` +
      (data.notes.length ? " · " + data.notes.join("; ") : ""));
  } catch (e) {
    setStatus($("caption-status"), e.message, true);
  } finally {
    btn.disabled = false;
  }
});

// ---- match
$("match-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const a = $("match-a").files[0], b = $("match-b").files[0];
  if (!a || !b) { setStatus($("match-status"), "choose two images", true); return; }
  const form = new FormData();
  form.append("image_a", a);
  form.append("image_b", b);
  form.append("score", $("score").value);
  form.append("count", $("count").value || "30");
  const btn = $("match-btn");
  btn.disabled = true;
  setStatus($("match-status"), "matching…");
  try {
    const data = await api("/api/match", { method: "POST", body: form });
    $("match-result").src = data.image;
    setStatus($("match-status"), `top ${data.matches.length} matches by ${data.score} distance · ${data.model} · ` +
      `${data.took_ms.toFixed(0)} ms`);
  } catch (e) {
    setStatus($("match-status"), e.message, true);
  } finally {
    btn.disabled = false;
  }
});
