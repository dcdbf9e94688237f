// vlens web app: four tabs over the JSON API (see /docs). No build step, no dependencies.
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
let maxUpload = Infinity;
api("/api/info").then((info) => {
  features = info.features;
  maxUpload = info.max_upload_bytes || Infinity;
  if (info.index) {
    const recall = info.index.kind === "flat" ? "exact" : `recall@10 ${info.index.recall_at_10}`;
    $("index-info").textContent = `${info.index.name}: ${info.index.count} images · ${info.index.model} · ` +
      `${info.index.kind} (${recall})` +
      (info.index.skipped ? ` · ${info.index.skipped} unreadable file(s) skipped` : "");
    if (info.index.skipped) {  // the names, on hover: the same list `vlens index info` prints
      $("index-info").title = "skipped: " + info.index.skipped_files.map((s) => `${s.path} (${s.reason})`)
        .join("; ");
    }
    browse(0);  // the Search tab opens on the library itself
  } else {
    $("index-info").textContent = "no index loaded";
  }
  for (const [name, f] of Object.entries(features)) {
    if (!f.available) setStatus($(name + "-status"), `${name} is unavailable: ${f.detail}`, true);
  }
  showModelNotice(info.models || {});
}).catch((e) => setStatus($("search-status"), "cannot reach the server: " + e.message, true));

// A visible notice when a tab runs an embedded model: what it knows and how to start with the real one.
function showModelNotice(models) {
  const box = $("model-notice");
  box.innerHTML = "";
  const builtins = Object.entries(models).filter(([, m]) => m.builtin);
  if (!builtins.length) { box.hidden = true; return; }
  for (const [tab, m] of builtins) {
    const line = document.createElement("div");
    const tabName = tab.charAt(0).toUpperCase() + tab.slice(1);
    line.append(`${tabName} runs the embedded ${m.spec}`, m.knows ? ` (${m.knows})` : "",
      ". For real photos run ");
    const cmd = document.createElement("code");
    cmd.textContent = m.fetch;
    line.append(cmd, " and restart vlens serve" + (tab === "search" ? " after rebuilding the index with it." : "."));
    box.append(line);
  }
  box.hidden = false;
}

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

function filterValues() {
  const out = {};
  for (const name of ["after", "before", "camera", "folder", "near", "format"]) {
    const v = $("f-" + name).value.trim();
    if (v) out[name] = v;
  }
  return out;
}

// ---- browse: the library itself, a page at a time, before any query (and whenever the query is empty)
let browseOffset = 0;
let view = 0;  // what the grid shows now: an answer that arrives after the user asked for something else is dropped
function newView() {
  view += 1;
  $("results").innerHTML = "";
  $("dupes").innerHTML = "";
  $("more-btn").hidden = true;
  return view;
}
async function browse(offset = 0) {
  const grid = $("results");
  const mine = offset === 0 ? newView() : view;
  setStatus($("search-status"), "loading the library…");
  try {
    const page = await api(`/api/library?offset=${offset}&limit=60`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(filterValues()),
    });
    if (mine !== view) return;
    page.items.forEach((item) => {
      const card = document.createElement("div");
      card.className = "card";
      card.dataset.id = item.id;
      const img = document.createElement("img");
      img.src = item.thumb_url;
      img.alt = item.path;
      img.loading = "lazy";
      const meta = document.createElement("div");
      meta.className = "meta";
      const path = document.createElement("div");
      path.className = "path";
      path.textContent = item.path;
      path.title = `id:${item.id} ${item.path}`;
      meta.appendChild(path);
      card.append(img, meta);
      card.addEventListener("click", () => openLightbox({ ...item, score: null }, null));
      grid.appendChild(card);
    });
    browseOffset = offset + page.items.length;
    $("more-btn").hidden = browseOffset >= page.passed;
    const kinds = Object.entries(page.skipped_by_kind).map(([k, n]) => `${n} ${k}`).join(", ");
    const filtered = page.passed !== page.total ? ` (${page.passed} of ${page.total} pass the filters)` : "";
    setStatus($("search-status"), `library: showing ${browseOffset} of ${page.passed} images${filtered}` +
      (page.skipped ? ` · skipped ${page.skipped} file(s): ${kinds}` : ""));
  } catch (e) {
    if (mine === view) setStatus($("search-status"), e.message, true);
  }
}
$("more-btn").addEventListener("click", () => browse(browseOffset));
$("filter-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if ($("query").value.trim()) $("search-form").requestSubmit(); else browse(0);
});

$("search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const query = $("query").value.trim();
  if (!query) { browse(0); return; }
  const btn = $("search-btn");
  btn.disabled = true;
  const mine = newView();
  setStatus($("search-status"), "searching…");
  try {
    const data = await api("/api/search", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query, k: parseInt($("k").value, 10) || 12, ...filterValues() }),
    });
    if (mine === view) showResults(data, `“${query}”`);
  } catch (e) {
    if (mine === view) setStatus($("search-status"), e.message, true);
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
  const query = $("query").value.trim();
  if (query) form.append("query", query);  // the image is one more + term of the typed query
  for (const [name, v] of Object.entries(filterValues())) form.append(name, v);
  const mine = newView();
  setStatus($("search-status"), "searching by image…");
  try {
    const data = await api("/api/search/image", { method: "POST", body: form });
    if (mine === view) showResults(data, query ? `${file.name} + “${query}”` : file.name);
  } catch (e) {
    if (mine === view) setStatus($("search-status"), e.message, true);
  }
  $("query-image").value = "";
});

// ---- duplicates: exact and near copies, one row per group, the file to keep first
$("dupes-btn").addEventListener("click", async () => {
  const mine = newView();
  const box = $("dupes");
  setStatus($("search-status"), "looking for duplicates…");
  try {
    const data = await api("/api/dupes");
    if (mine !== view) return;
    data.groups.forEach((g, n) => {
      const head = document.createElement("h3");
      head.textContent = `group ${n + 1}: ${g.kind}, ${g.images.length} images`;
      const row = document.createElement("div");
      row.className = "grid dupe-group";
      g.images.forEach((im, j) => {
        const card = document.createElement("div");
        card.className = "card";
        card.dataset.id = im.id;
        const img = document.createElement("img");
        img.src = im.thumb_url;
        img.alt = im.path;
        const meta = document.createElement("div");
        meta.className = "meta";
        meta.textContent = (j === 0 ? "keep · " : `cos ${im.similarity.toFixed(3)}` +
          (im.bits === null ? "" : ` · ${im.bits} bits`) + " · ") + `${(im.size / 1e3).toFixed(0)} kB`;
        const path = document.createElement("div");
        path.className = "path";
        path.textContent = im.path;
        path.title = im.path;
        meta.appendChild(path);
        card.append(img, meta);
        row.appendChild(card);
      });
      box.append(head, row);
    });
    setStatus($("search-status"), data.groups.length
      ? `${data.groups.length} group(s) of duplicates (cosine ≥ ${data.threshold}, perceptual hash within ` +
        `${data.max_bits} bits; exact copies always)` : "no duplicates found");
  } catch (e) {
    if (mine === view) setStatus($("search-status"), e.message, true);
  }
});

let lightboxHit = null;
function openLightbox(hit, rank) {
  lightboxHit = hit;
  $("lightbox-img").src = hit.url;
  $("lightbox-text").textContent = (rank === null ? `id:${hit.id} · ${hit.path}`
    : `#${rank} · ${hit.score.toFixed(4)} · id:${hit.id} · ${hit.path}`) +
    (hit.caption ? ` · “${hit.caption}”` : "");
  $("lightbox").hidden = false;
}
$("lightbox").addEventListener("click", () => { $("lightbox").hidden = true; });
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("lightbox").hidden = true; });

// An indexed image goes to another tab as if the user had uploaded it (same endpoints, same limits).
async function indexedFile(hit) {
  const get = async (url) => {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`could not fetch ${hit.path} from the index (HTTP ${r.status})`);
    return r.blob();
  };
  let blob = await get(hit.url);  // the original file
  if (blob.size > maxUpload) blob = await get(hit.url + "?size=2048");  // over the upload limit: a 2048 px copy
  const name = hit.path.split("/").pop() || `image-${hit.id}`;
  return new File([blob], name, { type: blob.type || "image/png" });
}

function putInInput(input, file) {
  const dt = new DataTransfer();
  dt.items.add(file);
  input.files = dt.files;
  input.dispatchEvent(new Event("change"));  // previews and the Explore upload listen to it
}

document.querySelectorAll("#lightbox-use button").forEach((btn) => {
  btn.addEventListener("click", async () => {
    const hit = lightboxHit;
    const [tab, slot] = btn.dataset.use.split("-");
    $("tab-" + tab).click();
    const status = $(tab + "-status");
    setStatus(status, `fetching ${hit.path} from the index…`);
    try {
      const file = await indexedFile(hit);
      putInInput($(tab === "caption" ? "caption-file" : `${tab}-${slot}`), file);
      if (tab !== "explore") setStatus(status, `${file.name} from the index is ready`);
    } catch (e) {
      setStatus(status, e.message, true);
    }
  });
});

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
// The image and the decoding settings of the Caption tab, as both "Caption" and "Why these words?" send them.
function decodingForm(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("strategy", $("strategy").value);
  form.append("top_k", $("top-k").value || "50");
  form.append("top_p", $("top-p").value || "1");
  form.append("temperature", $("temperature").value || "1");
  form.append("prompt", $("prompt").value);
  form.append("no_prompt", $("no-prompt").checked ? "true" : "false");
  if ($("seed").value) form.append("seed", $("seed").value);
  return form;
}

// "no prompt" and a typed prompt exclude each other: ticking the box greys the field out.
$("no-prompt").addEventListener("change", () => { $("prompt").disabled = $("no-prompt").checked; });

// "model, strategy, time · notes": what both caption buttons report under the form.
function decodingSummary(data) {
  return `${data.model}, ${data.settings.strategy}, ${data.took_ms.toFixed(0)} ms` +
    (data.notes.length ? " · " + data.notes.join("; ") : "");
}

$("caption-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("caption-file").files[0];
  if (!file) { setStatus($("caption-status"), "choose an image first", true); return; }
  const form = decodingForm(file);
  form.append("n", $("n").value || "1");
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
      lp.textContent = `log p ${c.logprob.toFixed(2)} (${c.mean_logprob.toFixed(2)}/token)` +
        (c.ended ? "" : " · cut at the token limit");
      if (!c.ended) lp.title = "the model had not ended this caption when it reached the token limit; raise it";
      li.appendChild(lp);
      list.appendChild(li);
    }
    setStatus($("caption-status"), decodingSummary(data));
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
  form.append("refine", $("refine").value);
  if ($("stride").value) form.append("stride", $("stride").value);
  form.append("pairs", $("pairs").value || "0");
  if ($("preset").value) form.append("preset", $("preset").value);
  form.append("bin_levels", $("bin").value);
  const btn = $("match-btn");
  btn.disabled = true;
  setStatus($("match-status"), "matching…");
  try {
    const data = await api("/api/match", { method: "POST", body: form });
    $("match-result").src = data.image;
    const what = data.pairs ? `${data.pairs} well-spread best-buddy pairs (best of each k-means cluster by ` +
      `${data.ranked_by})` + (data.preset ? ` · recipe ${data.preset}` : "") :
      `top ${data.matches.length} matches by ${data.score} distance`;
    setStatus($("match-status"), `${what} · ` +
      `refine ${data.refine} · ` + (data.stride ? `stride ${data.stride} px · ` : "") +
      (data.bin_levels ? "binned · " : "") +
      `${data.model} · ${data.took_ms.toFixed(0)} ms`);
  } catch (e) {
    setStatus($("match-status"), e.message, true);
  } finally {
    btn.disabled = false;
  }
});

// ---- caption: why these words
$("explain-btn").addEventListener("click", async () => {
  const file = $("caption-file").files[0];
  if (!file) { setStatus($("caption-status"), "choose an image first", true); return; }
  const form = decodingForm(file);
  const btn = $("explain-btn");
  btn.disabled = true;
  setStatus($("caption-status"), "looking at every step…");
  try {
    const data = await api("/api/caption/explain", { method: "POST", body: form });
    showExplanation(data);
    setStatus($("caption-status"), decodingSummary(data));
  } catch (e) {
    setStatus($("caption-status"), e.message, true);
  } finally {
    btn.disabled = false;
  }
});

function showExplanation(data) {
  const s = data.summary;
  $("explain-summary").textContent = `“${data.caption}” — the model's top word at ${s.top_choice_steps} of ` +
    `${s.steps} steps, ≈${s.mean_effective_choices} effective choices per step, lowest model probability of a ` +
    `chosen word ${s.min_p_model_of_chosen}` +
    (s.same_as_greedy ? " · same as greedy" : ` · greedy says “${data.greedy_caption}”`);
  const table = $("explain-table");
  table.innerHTML = "";
  data.steps.forEach((st, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = `${i + 1}. ${st.token}`;
    tr.appendChild(th);
    for (const c of st.candidates) {
      const td = document.createElement("td");
      td.textContent = c.token;
      const small = document.createElement("small");
      small.textContent = c.kept ? `${c.p_sample.toFixed(2)} (${c.p_model.toFixed(2)})` : `(${c.p_model.toFixed(2)})`;
      td.appendChild(small);
      if (!c.kept) td.className = "removed";
      else {
        const a = 0.1 + 0.9 * c.p_sample;
        td.style.background = `rgba(36, 87, 214, ${a.toFixed(3)})`;
        td.style.color = c.p_sample > 0.55 ? "#fff" : "inherit";
      }
      if (c.token === st.token) td.classList.add("chosen");
      td.title = c.kept ? `p under these settings ${c.p_sample.toFixed(4)}, model ${c.p_model.toFixed(4)}`
        : `removed by the filters; model ${c.p_model.toFixed(4)}`;
      tr.appendChild(td);
    }
    const meta = document.createElement("td");
    meta.className = "meta";
    meta.textContent = `rank ${st.rank} · ${st.eligible} eligible · ≈${st.effective_choices.toFixed(1)} choices`;
    tr.appendChild(meta);
    table.appendChild(tr);
  });
  $("explain").hidden = false;
}

// ---- explore: click a point, see where it lands; attention heads
const explore = { a: null, b: null, files: { a: null, b: null } };
window.vlensExplore = explore;  // the last answers, for people poking around in the console (and tests)

function placeMarker(el, xy, size, img) {
  el.style.left = `${(100 * xy[0] / size[0]).toFixed(3)}%`;
  el.style.top = `${(100 * xy[1] / size[1]).toFixed(3)}%`;
  el.dataset.x = xy[0];
  el.dataset.y = xy[1];
  el.hidden = false;
}

function resetMarkers() {
  ["marker-point", "marker-cycle", "marker-best"].forEach((id) => { $(id).hidden = true; });
}

async function uploadExplore(file) {
  const form = new FormData();
  form.append("file", file);
  return api("/api/explore/images", { method: "POST", body: form });
}

function setExploreImage(which, info) {
  explore[which] = info;
  $("explore-img-" + which).src = info.url;
  resetMarkers();
  $("explore-attention").innerHTML = "";
}

["a", "b"].forEach((which) => {
  $("explore-" + which).addEventListener("change", async () => {
    const f = $("explore-" + which).files[0];
    if (!f) return;
    explore.files[which] = f;
    setStatus($("explore-status"), "uploading…");
    try {
      setExploreImage(which, await uploadExplore(f));
      setStatus($("explore-status"), explore.a && explore.b ? "click anywhere on the first image" :
        "now the other image");
      if (which === "a" && $("explore-view").value === "attention") showAttention();
    } catch (e) {
      setStatus($("explore-status"), e.message, true);
    }
  });
});

$("explore-demo").addEventListener("click", async () => {
  try {
    const data = await api("/api/explore/demo", { method: "POST" });
    explore.files = { a: null, b: null };
    setExploreImage("a", data.a);
    setExploreImage("b", data.b);
    setStatus($("explore-status"), `demo: a photo and a crop of it shifted by (${data.shift.join(", ")}) px; ` +
      "click anywhere on the first image");
    if ($("explore-view").value === "attention") showAttention();
  } catch (e) {
    setStatus($("explore-status"), e.message, true);
  }
});

async function withReupload(call) {
  // The server keeps images in a bounded cache; if it dropped one, upload it again once.
  try {
    return await call();
  } catch (e) {
    if (!/upload it again/.test(e.message)) throw e;
    for (const w of ["a", "b"]) {
      if (explore.files[w]) explore[w] = await uploadExplore(explore.files[w]);
    }
    return await call();
  }
}

$("explore-img-a").addEventListener("click", async (ev) => {
  if (!explore.a || !explore.b) { setStatus($("explore-status"), "choose two images first", true); return; }
  const img = $("explore-img-a");
  const x = Math.min(explore.a.width - 0.01, ev.offsetX / img.clientWidth * explore.a.width);
  const y = Math.min(explore.a.height - 0.01, ev.offsetY / img.clientHeight * explore.a.height);
  const sizeA = [explore.a.width, explore.a.height];
  placeMarker($("marker-point"), [x, y], sizeA);
  setStatus($("explore-status"), "matching…");
  try {
    const data = await withReupload(() => api("/api/explore/point", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_a: explore.a.id, image_b: explore.b.id, x, y,
        pca: parseInt($("explore-pca").value, 10) || 0, size: parseInt($("explore-size").value, 10) || 448 }),
    }));
    explore.lastPoint = data;
    $("explore-img-b").src = data.heatmap;
    placeMarker($("marker-best"), data.best.xy, data.size_b);
    placeMarker($("marker-cycle"), data.cycle_xy, sizeA);
    const b = data.best;
    setStatus($("explore-status"), `(${x.toFixed(0)}, ${y.toFixed(0)}) → best match (${b.xy[0].toFixed(0)}, ` +
      `${b.xy[1].toFixed(0)}) · similarity ${b.similarity.toFixed(3)} · feature distance ` +
      `${b.feature_distance.toFixed(3)} · cycle ${data.mutual ? "returns to the same patch (mutual)" :
        `lands ${data.cycle_distance.toFixed(0)} px away`} · ${data.took_ms.toFixed(0)} ms` +
      (data.cached ? " (features cached)" : " (features computed)"));
  } catch (e) {
    setStatus($("explore-status"), e.message, true);
  }
});

async function showAttention() {
  if (!explore.a) { setStatus($("explore-status"), "choose a first image", true); return; }
  setStatus($("explore-status"), "attention…");
  try {
    const data = await withReupload(() => api("/api/explore/attention", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: explore.a.id, size: parseInt($("explore-size").value, 10) || 448 }),
    }));
    explore.lastAttention = data;
    const grid = $("explore-attention");
    grid.innerHTML = "";
    for (const p of data.panels) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = p.image;
      img.alt = p.title;
      const cap = document.createElement("figcaption");
      cap.textContent = p.title + (p.peak != null ? ` · peak ${(100 * p.peak).toFixed(1)}%` : "") +
        (p.on_prefix != null ? ` · on [CLS] ${(100 * p.on_prefix).toFixed(0)}%` : "");
      fig.append(img, cap);
      grid.appendChild(fig);
    }
    setStatus($("explore-status"), `[CLS] attention of block ${data.layer} of ${data.model}, ${data.heads} heads ` +
      `(each panel scaled to its own peak) · ${data.took_ms.toFixed(0)} ms`);
  } catch (e) {
    setStatus($("explore-status"), e.message, true);
  }
}

$("explore-view").addEventListener("change", () => {
  const att = $("explore-view").value === "attention";
  $("explore-point").hidden = att;
  $("explore-attention").hidden = !att;
  if (att) showAttention();
});
