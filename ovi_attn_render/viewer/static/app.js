// ovi-attn view: the page. Plain JS, no libraries. The server sends maps as float32 bytes
// (shape and colour range in headers) and frames as PNG; this file colours and composites
// them exactly as ovi_attn_render/draw.py does (overlay, overlay_tokens, apply_lut), so
// the canvas shows the pixels `ovi-attn render` would draw for the same selection.
"use strict";

const TOKEN_COLOURS = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180],
  [70, 240, 240], [245, 130, 48], [240, 50, 230]];  // draw.TOKEN_COLOURS, in legend order
const KEY = new URLSearchParams(location.search).get("key");
const $ = (id) => document.getElementById(id);

const ovi = {  // the page's state; tests read and drive it through window.ovi
  files: [], state: null, draws: 0, painted: false, busy: 0, lastMaps: {}, status: [],
};
window.ovi = ovi;

// ------------------------------------------------------------------ fetching
function query(extra, fileIndex) {
  const s = ovi.state, p = new URLSearchParams();
  if (KEY) p.set("key", KEY);
  p.set("file", fileIndex ?? 0);
  for (const t of s.tokens) p.append("token", t);
  p.set("frame", s.frame);
  if (s.step !== null) p.set("step", s.step);
  p.set("layers", layersSpec());
  if (s.head !== "all") p.set("heads", s.head);
  p.set("branch", s.branch); p.set("reduce", s.reduce); p.set("norm", s.norm);
  p.set("renorm", s.renorm ? "1" : "0"); p.set("cmap", s.cmap); p.set("alpha", s.alpha);
  for (const [k, v] of Object.entries(extra || {})) {
    if (k === "token") { p.delete("token"); p.append("token", v); } else p.set(k, v);
  }
  return p.toString();
}

async function get(path, params, fileIndex, kind) {
  const r = await fetch(`${path}?${query(params, fileIndex)}`);
  if (!r.ok) throw new Error(await r.text());
  if (kind === "json") return r.json();
  if (kind === "blob") return { blob: await r.blob(), headers: r.headers };
  return { buf: await r.arrayBuffer(), headers: r.headers };
}

async function getFloats(path, params, fileIndex) {
  const { buf, headers } = await get(path, params, fileIndex);
  const shape = (headers.get("X-Shape") || "").split(",").filter((x) => x).map(Number);
  return { data: new Float32Array(buf), shape, headers };
}

// answers that do not depend on some parameters (the grid holds every step and layer),
// kept across moves of those; cleared when a running capture gains steps
const answerCache = new Map();
async function cached(path, params, fileIndex, kind, ignored) {
  const q = new URLSearchParams(query(params, fileIndex));
  for (const k of ignored) q.delete(k);
  const key = `${path}?${q}`;
  if (!answerCache.has(key)) {
    if (answerCache.size > 200) answerCache.delete(answerCache.keys().next().value);
    answerCache.set(key, kind === "floats" ? getFloats(path, params, fileIndex) : get(path, params, fileIndex, kind));
  }
  try { return await answerCache.get(key); } catch (e) { answerCache.delete(key); throw e; }
}

const frameCache = new Map();  // url -> ImageData of a decoded frame at display size
async function frameImage(fileIndex) {
  const meta = ovi.files[fileIndex];
  const key = `${fileIndex}:${ovi.state.frame}:${meta.clip_written}`;
  if (frameCache.has(key)) return frameCache.get(key);
  const { blob } = await get("/api/frame", {}, fileIndex, "blob");
  const bmp = await createImageBitmap(blob);
  const c = new OffscreenCanvas(bmp.width, bmp.height), g = c.getContext("2d");
  g.drawImage(bmp, 0, 0);
  const img = g.getImageData(0, 0, bmp.width, bmp.height);
  if (frameCache.size > 64) frameCache.delete(frameCache.keys().next().value);
  frameCache.set(key, img);
  return img;
}

const lutCache = new Map();
async function lut() {
  const s = ovi.state, key = `${s.cmap}:${s.branch === "diff"}`;
  if (!lutCache.has(key)) lutCache.set(key, new Uint8Array((await get("/api/lut", {}, 0)).buf));
  return lutCache.get(key);
}

// ------------------------------------------------------------------ pixels (draw.py's arithmetic)
function normalised(m, lo, hi) {  // draw.normalise: (m - lo) / (hi - lo) in [0, 1], NaN -> 0
  const span = Math.max(Math.fround(hi - lo), 1e-12), out = new Float32Array(m.length);
  for (let i = 0; i < m.length; i++) {
    const v = Math.fround(Math.fround(m[i] - lo) / span);
    out[i] = v > 0 ? (v < 1 ? v : 1) : 0;  // NaN fails both tests -> 0
  }
  return out;
}

function lutIndex(v) { const k = Math.floor(v * 255 + 0.5); return k < 0 ? 0 : k > 255 ? 255 : k; }

// One token: draw.overlay (constant alpha); several: draw.overlay_tokens (alpha * value each).
function composite(frame, maps, h, w, table, alpha) {
  const W = frame.width, H = frame.height, src = frame.data, out = new ImageData(W, H), dst = out.data;
  const rows = new Int32Array(H), cols = new Int32Array(W);
  for (let Y = 0; Y < H; Y++) rows[Y] = Math.min(h - 1, Math.floor(Y * h / H));  // cv2 INTER_NEAREST
  for (let X = 0; X < W; X++) cols[X] = Math.min(w - 1, Math.floor(X * w / W));
  const a = Math.fround(alpha), keep = Math.fround(1 - a);
  for (let Y = 0; Y < H; Y++) {
    for (let X = 0; X < W; X++) {
      const p = (Y * W + X) * 4, cell = rows[Y] * w + cols[X];
      if (maps.length === 1) {
        const k = lutIndex(maps[0][cell]) * 3;
        for (let c = 0; c < 3; c++) dst[p + c] = Math.floor(Math.fround(Math.fround(src[p + c] * keep) + Math.fround(table[k + c] * a)) + 0.5);
      } else {
        let total = 0;
        const as = maps.map((m) => { const v = Math.fround(a * m[cell]); total += v; return v; });
        const scale = total > a ? a / Math.max(total, 1e-12) : 1;
        let sum = 0;
        for (let t = 0; t < as.length; t++) { as[t] *= scale; sum += as[t]; }
        for (let c = 0; c < 3; c++) {
          let v = src[p + c] * (1 - sum);
          for (let t = 0; t < as.length; t++) v += as[t] * TOKEN_COLOURS[t][c];
          dst[p + c] = Math.min(255, Math.max(0, Math.floor(v + 0.5)));
        }
      }
      dst[p + 3] = 255;
    }
  }
  return out;
}

// ------------------------------------------------------------------ state and controls
function layersSpec() {
  const s = ovi.state, L = ovi.files[0].layers;
  if (s.layerMode === "one") return String(L[s.layer]);
  if (s.layerMode === "range") return `${Math.min(s.layerLo, s.layerHi)}-${Math.max(s.layerLo, s.layerHi)}`;
  return "all";
}

function readable(fileIndex) { return ovi.status[fileIndex]?.readable_steps ?? ovi.files[fileIndex].readable_steps; }
// the steps the slider offers: those every open file can show (two files compare step for step)
function commonSteps() { return ovi.files.map((_, i) => readable(i)).reduce((a, b) => a.filter((v) => b.includes(v))); }

function syncControls() {
  const s = ovi.state, m = ovi.files[0], steps = commonSteps();
  $("frame").max = Math.min(...ovi.files.map((f) => f.num_pixel_frames)) - 1; $("frame").value = s.frame;
  const latent = m.latent_frame_of_pixel[s.frame] ?? 0;
  $("frame-label").textContent = `frame ${s.frame} (latent ${latent}) ${(s.frame / m.fps).toFixed(2)} s`;
  $("step").max = Math.max(0, steps.length - 1);
  const pos = Math.max(0, steps.indexOf(s.step));
  $("step").value = pos;
  $("step-label").textContent = steps.length ? `step ${s.step} (${pos + 1} of ${steps.length} readable, ${m.num_steps} in the run)` : "no step yet";
  $("layer").max = m.layers.length - 1; $("layer").value = s.layer;
  $("layer").disabled = s.layerMode !== "one";
  $("layer-lo").disabled = $("layer-hi").disabled = s.layerMode !== "range";
  $("layer-label").textContent = `layers ${layersSpec()} (${s.reduce})`;
  $("layer-mode").value = s.layerMode; $("reduce").value = s.reduce; $("head").value = s.head;
  $("branch").value = s.branch; $("norm").value = s.norm; $("cmap").value = s.cmap;
  $("alpha").value = s.alpha; $("renorm").checked = s.renorm; $("background").value = s.background;
  if ($("query").dataset.file !== String(s.queryFile)) fillQueries(s.queryFile);
  $("query-file").value = s.queryFile; $("query").value = s.query; $("show-track").checked = s.showTrack;
  $("track").value = s.track; $("track-row").hidden = queryTower(s.query, s.queryFile) === "audio";
  document.querySelectorAll("#groups .chip").forEach((el) => {
    const k = s.tokens.indexOf(el.dataset.group);
    el.classList.toggle("picked", k >= 0);
    el.style.setProperty("--c", k >= 0 ? `rgb(${TOKEN_COLOURS[k].join(",")})` : "");
  });
  document.querySelectorAll(".tok.captured").forEach((el) => {
    const k = s.tokens.findIndex((t) => el.dataset.groups.split("\n").includes(t));
    el.classList.toggle("picked", k >= 0);
    el.style.setProperty("--c", k >= 0 ? `rgb(${TOKEN_COLOURS[k].join(",")})` : "");
  });
}

function buildControls() {
  const m = ovi.files[0];
  const box = $("groups");
  m.groups.forEach((g, i) => {
    const el = document.createElement("span");
    el.className = "chip" + (["eos", "pad"].includes(m.group_kinds[i]) ? " special" : "");
    el.dataset.group = g; el.textContent = g;
    el.onclick = () => toggleToken(g);
    el.onmouseenter = () => highlightGroup(g, true);
    el.onmouseleave = () => highlightGroup(g, false);
    box.appendChild(el);
  });
  $("head").innerHTML = `<option value="all">${m.heads_mode === "all" ? "reduce all" : "mean (captured)"}</option>` +
    (m.heads_mode === "all" ? m.heads.map((h) => `<option value="${h}">${h}</option>`).join("") : "");
  const branches = [...m.branches];
  if (m.branches.includes("cond") && m.branches.includes("uncond")) branches.push("diff");
  $("branch").innerHTML = branches.map((b) => `<option value="${b}">${b === "diff" ? "cond - uncond" : b}</option>`).join("");
  $("layer-lo").value = m.layers[0]; $("layer-hi").value = m.layers[m.layers.length - 1];
  $("query-box").hidden = !anyQueries();
  $("query-file-row").hidden = ovi.files.length < 2;  // compare mode: whose query points
  $("query-file").innerHTML = ovi.files.map((f, i) => `<option value="${i}">${escapeHtml(f.name)}</option>`).join("");
  const on = (id, ev, fn) => $(id).addEventListener(ev, fn);
  on("frame", "input", (e) => set({ frame: +e.target.value }));
  on("step", "input", (e) => set({ step: commonSteps()[+e.target.value] }));
  on("layer-mode", "change", (e) => set({ layerMode: e.target.value }));
  on("layer", "input", (e) => set({ layer: +e.target.value }));
  on("layer-lo", "change", (e) => set({ layerLo: +e.target.value }));
  on("layer-hi", "change", (e) => set({ layerHi: +e.target.value }));
  for (const id of ["reduce", "head", "branch", "norm", "cmap", "background"]) on(id, "change", (e) => set({ [id]: e.target.value }));
  on("alpha", "input", (e) => set({ alpha: +e.target.value }));
  on("renorm", "change", (e) => set({ renorm: e.target.checked }));
  on("query", "change", (e) => set({ query: e.target.value }));
  on("query-file", "change", (e) => {  // the query stays chosen only where the other file has it too
    const i = +e.target.value;
    set({ queryFile: i, query: queryTower(ovi.state.query, i) ? ovi.state.query : "" });
  });
  on("track", "change", (e) => set({ track: e.target.value }));
  on("show-track", "change", (e) => set({ showTrack: e.target.checked }));
  on("play-steps", "click", () => play("steps"));
  on("play-frames", "click", () => play("frames"));
  on("save", "click", saveView);
}

// ------------------------------------------------------------------ query points
function anyQueries() { return ovi.files.some((f) => f.video_queries.length || f.audio_queries.length); }

// which tower a label is a query of in file i ("video", "audio"), or null (labels are unique in a file)
function queryTower(label, i) {
  const m = ovi.files[i];
  if (!label || !m) return null;
  if (m.video_queries.some((q) => q.label === label)) return "video";
  return m.audio_queries.some((q) => q.label === label) ? "audio" : null;
}

// the selector lists file i's query points: video ones where they are, audio ones when
function fillQueries(i) {
  const m = ovi.files[i], sel = $("query");
  sel.innerHTML = `<option value="">none</option>`;
  const add = (label, text) => {
    const el = document.createElement("option");
    el.value = label; el.textContent = text; sel.appendChild(el);
  };
  for (const q of m.video_queries) add(q.label, q.y >= 0 ? `${q.label} (frame ${q.pixel_frame}, cell ${q.y},${q.x})` : `${q.label} (adaptive)`);
  for (const q of m.audio_queries) add(q.label, `${q.label} (audio, ${q.time === null ? "?" : q.time.toFixed(3)} s, token ${q.audio_token})`);
  const none = !m.video_queries.length && !m.audio_queries.length;
  sel.disabled = none;
  $("query-none").hidden = !none;
  $("query-none").textContent = none ? `${m.name} has no query points; capture it with queries: in the prompt file (docs/PROMPT.md).` : "";
  sel.dataset.file = String(i);
}

function buildPrompts() {
  const box = $("prompts");
  ovi.files.forEach((m) => {
    const div = document.createElement("div");
    div.className = "prompt";
    div.innerHTML = ovi.files.length > 1 ? `<span class="file">${escapeHtml(m.name)}</span>` : "";
    let at = 0;
    const text = m.prompt;
    for (const t of m.tokens) {
      if (t.start > at) div.appendChild(document.createTextNode(text.slice(at, t.start)));
      const span = document.createElement("span");
      span.className = "tok" + (t.groups.length ? " captured" : "");
      span.textContent = t.end > t.start ? text.slice(t.start, t.end) : (t.piece === "</s>" ? "" : "");
      span.dataset.groups = t.groups.join("\n");
      span.title = `${t.piece}  #${t.index}` + (t.groups.length ? `  groups: ${t.groups.join(", ")}` : "");
      if (t.groups.length) {
        span.onmouseenter = () => t.groups.forEach((g) => highlightGroup(g, true));
        span.onmouseleave = () => t.groups.forEach((g) => highlightGroup(g, false));
        span.onclick = () => toggleToken(t.groups[0]);
      }
      div.appendChild(span);
      at = Math.max(at, t.end);
    }
    if (at < text.length) div.appendChild(document.createTextNode(text.slice(at)));
    box.appendChild(div);
  });
}

function highlightGroup(g, on) {  // the group's chip and every token of the prompt in it
  document.querySelectorAll("#groups .chip").forEach((el) => { if (el.dataset.group === g) el.classList.toggle("hl", on); });
  document.querySelectorAll(".tok.captured").forEach((el) => {
    if (el.dataset.groups.split("\n").includes(g)) el.classList.toggle("hl", on);
  });
}

function toggleToken(g) {
  const t = [...ovi.state.tokens], k = t.indexOf(g);
  if (k >= 0) t.splice(k, 1); else if (t.length < 8) t.push(g);
  return set({ tokens: t });
}

function escapeHtml(s) { return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

function buildPanels() {
  const box = $("views");
  ovi.files.forEach((m, i) => {
    const div = document.createElement("div");
    div.className = "panel";
    const [H, W] = m.display_size;
    div.innerHTML = `<h2>${escapeHtml(m.name)}</h2><div class="caption" id="caption-${i}"></div>
      <div class="pic"><canvas class="main" id="canvas-${i}" width="${W}" height="${H}"></canvas>
      <canvas id="bar-${i}" width="64" height="${H}"></canvas></div>
      <div class="legend" id="legend-${i}"></div>
      <canvas class="strip" id="strip-${i}" width="${W + 68}" height="90"></canvas>
      <canvas class="strip" id="sync-${i}" width="${W + 68}" height="110"></canvas>
      <audio id="audio-${i}" preload="auto"></audio>`;
    box.appendChild(div);
    const canvas = div.querySelector("canvas.main");
    if (i === 0 && anyQueries()) {  // the selected query point's self-attention, beside file 0
      const q = document.createElement("div");
      q.className = "panel"; q.id = "query-panel"; q.hidden = true;
      q.innerHTML = `<h2>query point</h2><div class="caption" id="query-caption"></div>
        <div class="pic" id="query-video"><canvas class="main" id="query-canvas" width="${W}" height="${H}"></canvas>
        <canvas id="query-bar" width="64" height="${H}"></canvas></div>
        <div class="pic" id="query-audio-box" hidden><canvas class="strip" id="query-audio" width="${W + 68}" height="${AUDIO_QUERY.height}"></canvas>
        <canvas id="query-audio-bar" width="64" height="${AUDIO_QUERY.height}"></canvas></div>`;
      box.appendChild(q);
    }
    canvas.addEventListener("click", (e) => {
      const r = canvas.getBoundingClientRect(), [F, h, w] = m.grid;
      const y = Math.min(h - 1, Math.floor((e.clientY - r.top) / r.height * h));
      const x = Math.min(w - 1, Math.floor((e.clientX - r.left) / r.width * w));
      set({ patch: { file: i, y, x } });
    });
  });
}

// ------------------------------------------------------------------ drawing
let drawTicket = 0;
function set(patch) {
  Object.assign(ovi.state, patch);
  // the difference draws one token (render's diff view would put several side by side)
  if (ovi.state.branch === "diff" && ovi.state.tokens.length > 1) ovi.state.tokens = ovi.state.tokens.slice(-1);
  syncControls();
  showCommand();
  history.replaceState(null, "", viewAddress());
  return redraw();
}
ovi.set = set;

function message(text) { $("message").textContent = text || ""; }

// set() resolves when the frame canvas shows the new state; the side panels (grid, patch,
// audio, sync) follow without holding it up. ovi.idle() waits for those too.
async function redraw() {
  const ticket = ++drawTicket;
  ovi.busy++;
  let drawn = false;
  try {
    const per = await drawMain(ticket);
    drawn = ticket === drawTicket;
    if (drawn) {
      message(""); ovi.draws++;
      if (!ovi.painted) { ovi.paintedAt = performance.now(); loadAudio(); }  // the map first, then the clip's audio
      ovi.painted = true;
    }
    if (drawn) drawSide(ticket, per).catch((e) => { if (ticket === drawTicket) message(String(e.message || e).split("\n")[0]); })
      .finally(() => { ovi.busy--; });
  } catch (e) {
    if (ticket === drawTicket) message(String(e.message || e).split("\n")[0]);
  } finally {
    if (!drawn) ovi.busy--;
  }
}

ovi.idle = async () => {  // resolves once no draw is in flight (for tests and the benchmark)
  while (ovi.busy > 0) await new Promise((r) => setTimeout(r, 5));
};

async function drawMain(ticket) {
  const s = ovi.state, n = ovi.files.length;
  // every file's frame and maps first (all requests at once), so two files can share one colour scale
  const [table, per] = await Promise.all([lut(), Promise.all(ovi.files.map(async (m, i) => {
    try {
      const [frame, maps] = await Promise.all([frameImage(i),
        Promise.all(s.tokens.map((t) => getFloats("/api/map", { token: t }, i)))]);
      return { frame, maps };
    } catch (e) { return { error: String(e.message || e).split("\n")[0] }; }
  }))]);
  if (ticket !== drawTicket) return;
  const ranges = s.tokens.map((_, k) => {
    const ok = per.filter((p) => !p.error);
    const lo = Math.min(...ok.map((p) => +p.maps[k].headers.get("X-Lo")));
    const hi = Math.max(...ok.map((p) => +p.maps[k].headers.get("X-Hi")));
    return [lo, hi];
  });
  ovi.lastMaps = {};
  per.forEach((p, i) => {
    const canvas = $(`canvas-${i}`), g = canvas.getContext("2d");
    if (p.error) { $(`caption-${i}`).textContent = p.error; g.fillStyle = "#333"; g.fillRect(0, 0, canvas.width, canvas.height); return; }
    const [F, h, w] = ovi.files[i].grid;
    const norm = p.maps.map((mp, k) => {
      const [lo, hi] = n > 1 ? ranges[k] : [+mp.headers.get("X-Lo"), +mp.headers.get("X-Hi")];
      return normalised(mp.data, lo, hi);
    });
    ovi.lastMaps[i] = { norm, raw: p.maps.map((mp) => mp.data), ranges: p.maps.map((mp, k) => n > 1 ? ranges[k] : [+mp.headers.get("X-Lo"), +mp.headers.get("X-Hi")]) };
    const img = s.tokens.length ? composite(p.frame, norm, h, w, table, s.alpha) : p.frame;
    g.putImageData(img, 0, 0);
    if (s.patch && s.patch.file === i) {
      g.strokeStyle = "#0ff"; g.lineWidth = 2;
      g.strokeRect(s.patch.x * canvas.width / w, s.patch.y * canvas.height / h, canvas.width / w, canvas.height / h);
    }
    drawColourBar(i, table, ovi.lastMaps[i].ranges[0]);
    drawLegend(i);
    $(`caption-${i}`).textContent = caption(i);
  });
  return per;
}

async function drawSide(ticket, per) {
  // a second file that lacks this step or token says so in its own panel; the rest still draws
  const perFile = (i) => drawAudio(i, ticket).catch((e) => {
    if (i === 0) throw e;
    $(`caption-${i}`).textContent = String(e.message || e).split("\n")[0];
  });
  await Promise.all([drawGrid(ticket), drawPatch(ticket), drawQuery(ticket),
    ...ovi.files.map((_, i) => (per[i].error ? null : perFile(i)))]);
}

function caption(i) {
  const s = ovi.state, m = ovi.files[i];
  const latent = m.latent_frame_of_pixel[s.frame] ?? 0;
  const what = s.branch === "diff" ? "cond - uncond" : s.branch;
  return s.tokens.length ? `step ${s.step}  frame ${s.frame} (latent ${latent})  ${what}  layers ${layersSpec()} (${s.reduce})  norm ${s.norm}${s.renorm ? " renorm" : ""}`
    : "pick a token to overlay its map";
}

function drawColourBar(i, table, range) {
  const c = $(`bar-${i}`);
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  if (!range || !ovi.state.tokens.length) return;
  if (ovi.state.tokens.length > 1) return;  // several tokens: the legend says which hue is which
  paintBar(c, table, range);
}

function paintBar(c, table, range) {  // a vertical colour bar with its top, middle and bottom values
  const g = c.getContext("2d");
  const top = 12, bottom = c.height - 12;
  for (let y = top; y < bottom; y++) {
    const k = lutIndex(1 - (y - top) / (bottom - top - 1)) * 3;
    g.fillStyle = `rgb(${table[k]},${table[k + 1]},${table[k + 2]})`;
    g.fillRect(4, y, 14, 1);
  }
  g.fillStyle = "#ddd"; g.font = "11px sans-serif";
  const fmt = (v) => (Math.abs(v) >= 1e-3 || v === 0 ? v.toPrecision(3) : v.toExponential(1));
  g.fillText(fmt(range[1]), 21, top + 8); g.fillText(fmt((range[0] + range[1]) / 2), 21, (top + bottom) / 2 + 4);
  g.fillText(fmt(range[0]), 21, bottom);
}

function drawLegend(i) {
  const s = ovi.state;
  $(`legend-${i}`).innerHTML = s.tokens.length > 1 ? s.tokens.map((t, k) =>
    `<span><i style="background:rgb(${TOKEN_COLOURS[k].join(",")})"></i>${escapeHtml(t)}</span>`).join("") : "";
}

// the selected query point of the query file: a video query's self-attention at this frame,
// step and layers over the frame, as `render --view query --steps <step>` draws it (one scale
// 0..top over the clip), the point as a ring (filled on its own frame) and its track up to
// this frame; an audio query's attention over audio time (drawAudioQuery)
async function drawQuery(ticket) {
  const s = ovi.state, panel = $("query-panel");
  if (!panel) return;
  const i = s.queryFile, tower = queryTower(s.query, i);
  panel.hidden = !tower;
  if (!tower) return;
  $("query-video").hidden = tower !== "video"; $("query-audio-box").hidden = tower !== "audio";
  return tower === "audio" ? drawAudioQuery(ticket, i) : drawVideoQuery(ticket, i);
}

function queryFailed(ticket, e) {
  if (ticket === drawTicket) $("query-caption").textContent = String(e.message || e).split("\n")[0];
}

function queryFileName(i) { return ovi.files.length > 1 ? `${ovi.files[i].name}: ` : ""; }

async function drawVideoQuery(ticket, i) {
  const s = ovi.state, m = ovi.files[i], [F, h, w] = m.grid;
  let frame, map, track, table;
  try {
    [frame, map, track, table] = await Promise.all([frameImage(i), getFloats("/api/query_map", { query: s.query }, i),
      s.showTrack ? getFloats("/api/query_track", { query: s.query, track: s.track }, i) : null, lut()]);
  } catch (e) { queryFailed(ticket, e); return; }
  if (ticket !== drawTicket) return;
  const H = map.headers, range = [+H.get("X-Lo"), +H.get("X-Hi")], latent = +H.get("X-Latent");
  const qy = +H.get("X-Query-Y"), qx = +H.get("X-Query-X"), qframe = +H.get("X-Query-Frame");
  const c = $("query-canvas"), bar = $("query-bar");
  if (c.width !== frame.width || c.height !== frame.height) {  // the query file's own display size
    c.width = frame.width; c.height = frame.height; bar.height = frame.height;
  }
  const g = c.getContext("2d");
  g.putImageData(composite(frame, [normalised(map.data, range[0], range[1])], h, w, table, s.alpha), 0, 0);
  const px = (y, x) => [x * c.width / w, y * c.height / h];  // token cells (centres at +0.5) -> canvas pixels
  if (track) {
    const pts = [];
    for (let f = 0; f <= latent && f < track.shape[0]; f++) {
      const y = track.data[2 * f], x = track.data[2 * f + 1];
      if (Number.isFinite(y) && Number.isFinite(x)) pts.push(px(y, x));
    }
    g.strokeStyle = "#0ff"; g.lineWidth = 2; g.beginPath();
    pts.forEach(([X, Y], k) => (k ? g.lineTo(X, Y) : g.moveTo(X, Y)));
    g.stroke();
    if (pts.length) { const [X, Y] = pts[pts.length - 1]; g.fillStyle = "#0ff"; g.beginPath(); g.arc(X, Y, 4, 0, 2 * Math.PI); g.fill(); }
  }
  if (qy >= 0) {  // views/query.mark_query's ring and cross
    const [X, Y] = px(qy + 0.5, qx + 0.5), r = Math.max(5, Math.floor(c.height / 40));
    g.lineWidth = 3; g.strokeStyle = "#000"; g.beginPath(); g.arc(X, Y, r + 2, 0, 2 * Math.PI); g.stroke();
    g.fillStyle = g.strokeStyle = `rgb(${TOKEN_COLOURS[0].join(",")})`; g.lineWidth = 2;
    g.beginPath(); g.arc(X, Y, r, 0, 2 * Math.PI);
    if (s.frame === qframe) g.fill(); else g.stroke();
    g.strokeStyle = "#fff"; g.lineWidth = 1; g.beginPath();
    g.moveTo(X - r / 2, Y); g.lineTo(X + r / 2, Y); g.moveTo(X, Y - r / 2); g.lineTo(X, Y + r / 2); g.stroke();
  }
  bar.getContext("2d").clearRect(0, 0, bar.width, bar.height);
  paintBar(bar, table, range);
  const where = qy >= 0 ? `at frame ${qframe}, cell ${qy},${qx}` : "adaptive, not found yet";
  $("query-caption").textContent = `${queryFileName(i)}query ${s.query} (${where})  step ${H.get("X-Step")}  frame ${s.frame} (latent ${latent})  ` +
    `${s.branch}  layers ${layersSpec()} (mean)  scale 0..top of the clip` + (track ? `  track ${s.track}` : "");
  ovi.lastQuery = { tower: "video", file: i, query: s.query, latent, range, qy, qx, track: track ? Array.from(track.data) : null,
    method: track ? s.track : null };
}

// an audio query: the file's waveform on top, under it its attention over audio time at this
// step and layers (layers averaged; scale 0..top) with its own audio token marked by a white
// line, as views.query.audio_query_strips marks it
const AUDIO_QUERY = { height: 96, waveTop: 14, waveHalf: 16, stripTop: 60, stripHeight: 30 };
async function drawAudioQuery(ticket, i) {
  const s = ovi.state, m = ovi.files[i], c = $("query-audio"), W = c.width;
  let map, wave, table;
  try {
    [map, wave, table] = await Promise.all([getFloats("/api/audio_query_map", { query: s.query }, i), envelope(i, W), lut()]);
  } catch (e) { queryFailed(ticket, e); return; }
  if (ticket !== drawTicket) return;
  const H = map.headers, range = [+H.get("X-Lo"), +H.get("X-Hi")];
  const token = +H.get("X-Query-Audio-Token"), time = +H.get("X-Query-Time"), La = map.data.length;
  const g = c.getContext("2d"), A = AUDIO_QUERY, mid = A.waveTop + A.waveHalf;
  g.fillStyle = "#0d0e11"; g.fillRect(0, 0, W, c.height);
  g.strokeStyle = "#789";
  for (let x = 0; x < W; x++) {
    g.beginPath(); g.moveTo(x + 0.5, mid - wave.data[x] * A.waveHalf); g.lineTo(x + 0.5, mid - wave.data[W + x] * A.waveHalf); g.stroke();
  }
  const dur = m.audio_tokens * m.samples_per_token / m.sample_rate, t = s.frame / m.fps;
  g.strokeStyle = "#0ff"; g.beginPath(); g.moveTo(t / dur * W, A.waveTop); g.lineTo(t / dur * W, mid + A.waveHalf); g.stroke();
  const v = normalised(map.data, range[0], range[1]);
  for (let l = 0; l < La; l++) {  // one block per audio token, as drawAudio draws the text-to-audio strip
    const k = lutIndex(v[l]) * 3;
    g.fillStyle = `rgb(${table[k]},${table[k + 1]},${table[k + 2]})`;
    g.fillRect(Math.floor(l * W / La), A.stripTop, Math.ceil(W / La), A.stripHeight);
  }
  const x = Math.floor((token + 0.5) * W / La) + 0.5;
  g.strokeStyle = "#fff"; g.lineWidth = 1; g.beginPath(); g.moveTo(x, A.stripTop - 4); g.lineTo(x, A.stripTop + A.stripHeight); g.stroke();
  g.fillStyle = "#aaa"; g.font = "10px sans-serif";
  g.fillText(`waveform${m.clip_written ? "" : " (not written yet)"}`, 2, 10);
  g.fillText(`'${s.query}' -> audio, step ${H.get("X-Step")} (white: the query at ${time.toFixed(3)} s)`, 2, A.stripTop - 6);
  const bar = $("query-audio-bar");
  bar.getContext("2d").clearRect(0, 0, bar.width, bar.height);
  paintBar(bar, table, range);
  $("query-caption").textContent = `${queryFileName(i)}audio query ${s.query} (${time.toFixed(3)} s, audio token ${token})  ` +
    `step ${H.get("X-Step")}  ${s.branch}  layers ${layersSpec()} (mean)  scale 0..top`;
  ovi.lastQuery = { tower: "audio", file: i, query: s.query, range, token, time, step: +H.get("X-Step"),
    values: Array.from(map.data), strip: { top: A.stripTop, height: A.stripHeight } };
}

// the layers x steps mini-grid of the first token, current cell outlined
async function drawGrid(ticket) {
  const s = ovi.state, c = $("grid"), g = c.getContext("2d");
  if (!s.tokens.length) { g.clearRect(0, 0, c.width, c.height); return; }
  const { blob, headers } = await cached("/api/grid", { token: s.tokens[0] }, 0, "blob", ["step", "layers", "alpha"]);
  const bmp = await createImageBitmap(blob);
  if (ticket !== drawTicket) return;
  const [S, L, h, w] = headers.get("X-Cells").split(",").map(Number);
  const scale = Math.max(1, Math.min(8, Math.floor(300 / bmp.width)));
  // square cells where they fit; a few layers get taller rows so they stay clickable
  const cw = Math.min(300 / S, (w + 1) * scale), ch = Math.max(cw * (h + 1) / (w + 1), Math.min(16, 240 / L));
  c.width = Math.ceil(cw * S); c.height = Math.ceil(ch * L);
  g.imageSmoothingEnabled = false;
  g.drawImage(bmp, 0, 0, c.width, c.height);
  ovi.gridCells = { S, L, cw, ch };
  const m = ovi.files[0], col = readable(0).indexOf(s.step);
  const layers = m.layers.map((v, k) => k).filter((k) => s.layerMode === "all" || (s.layerMode === "one" ? k === s.layer :
    m.layers[k] >= Math.min(s.layerLo, s.layerHi) && m.layers[k] <= Math.max(s.layerLo, s.layerHi)));
  g.strokeStyle = "#0ff"; g.lineWidth = 1;
  for (const k of layers) g.strokeRect(col * cw + 0.5, k * ch + 0.5, cw - 1, ch - 1);
}

// the clicked patch: mass on every captured group, and how it moves over steps and layers
async function drawPatch(ticket) {
  const s = ovi.state;
  if (!s.patch) return;
  const d = await get("/api/patch", { y: s.patch.y, x: s.patch.x, file: s.patch.file }, s.patch.file, "json");
  if (ticket !== drawTicket) return;
  ovi.lastPatch = d;
  const sum = d.bars.reduce((a, b) => a + b, 0);
  $("patch-where").textContent = `(row ${d.y}, column ${d.x}, latent ${d.latent}, step ${d.step}; sum ${sum.toFixed(3)})`;
  const colour = (g) => {
    const k = s.tokens.indexOf(g);
    return k >= 0 ? `rgb(${TOKEN_COLOURS[k].join(",")})` : (["<eos>", "<pad>"].includes(g) ? "#888" : "#567");
  };
  const c = $("bars"), gx = c.getContext("2d"), rowH = 14;
  c.height = d.groups.length * rowH + 4;
  gx.clearRect(0, 0, c.width, c.height); gx.font = "11px sans-serif";
  const maxV = Math.max(1e-9, ...d.bars);
  d.groups.forEach((g, k) => {
    const y = 2 + k * rowH;
    gx.fillStyle = "#bbb"; gx.fillText(g.slice(0, 14), 2, y + 10);
    gx.fillStyle = colour(g); gx.fillRect(90, y + 2, (c.width - 140) * d.bars[k] / maxV, rowH - 4);
    gx.fillStyle = "#ddd"; gx.fillText(d.bars[k].toFixed(3), c.width - 44, y + 10);
  });
  lines($("patch-steps"), d.steps, d.over_steps, d.groups, colour, d.step);
  lines($("patch-layers"), d.layers, d.over_layers, d.groups, colour, null);
}

function lines(c, xs, ys, groups, colour, mark) {
  const g = c.getContext("2d"), W = c.width, H = c.height, pad = 18;
  g.clearRect(0, 0, W, H);
  const maxV = Math.max(1e-9, ...ys.flat());
  const X = (i) => pad + (xs.length > 1 ? i / (xs.length - 1) : 0.5) * (W - 2 * pad);
  const Y = (v) => H - pad - v / maxV * (H - 2 * pad);
  g.strokeStyle = "#444"; g.strokeRect(pad, pad, W - 2 * pad, H - 2 * pad);
  g.fillStyle = "#888"; g.font = "10px sans-serif";
  g.fillText(String(xs[0]), pad, H - 5); g.fillText(String(xs[xs.length - 1]), W - pad - 12, H - 5);
  g.fillText(maxV.toFixed(2), 1, pad + 4);
  ys.forEach((row, k) => {
    g.strokeStyle = colour(groups[k]); g.lineWidth = ovi.state.tokens.includes(groups[k]) ? 2 : 1;
    g.beginPath();
    row.forEach((v, i) => (i ? g.lineTo(X(i), Y(v)) : g.moveTo(X(i), Y(v))));
    g.stroke();
  });
  if (mark !== null) { const i = xs.indexOf(mark); g.strokeStyle = "#0ff"; g.beginPath(); g.moveTo(X(i), pad); g.lineTo(X(i), H - pad); g.stroke(); }
}

// text-to-audio strip over the waveform, and the sync map; a cursor at the playback time
const waveCache = new Map();
async function envelope(i, columns) {  // the decoded waveform's min and max per column [2, columns]
  const key = `${i}:${ovi.files[i].clip_written}:${columns}`;
  if (!waveCache.has(key)) waveCache.set(key, await getFloats("/api/waveform", { columns }, i));
  return waveCache.get(key);
}
async function drawAudio(i, ticket) {
  const s = ovi.state, m = ovi.files[i], c = $(`strip-${i}`), g = c.getContext("2d");
  const W = c.width, dur = m.audio_tokens * m.samples_per_token / m.sample_rate;
  const key = `${i}:${m.clip_written}`;
  const wave = await envelope(i, W);
  if (s.background === "spectrogram" && !waveCache.has(`spec:${key}`)) waveCache.set(`spec:${key}`, await getFloats("/api/spectrogram", {}, i));
  const spec = s.background === "spectrogram" ? waveCache.get(`spec:${key}`) : null;
  const table = await lut();
  let strips = null;
  if (s.tokens.length && m.variables.includes("text_audio")) strips = await cached("/api/audio_strips", { token: s.tokens[0] }, i, "floats", ["step", "alpha", "norm"]);
  let sync = null;
  if (m.variables.includes("video_audio") || m.variables.includes("audio_video")) sync = await getFloats("/api/sync", {}, i);
  if (ticket !== drawTicket) return;
  g.fillStyle = "#0d0e11"; g.fillRect(0, 0, W, c.height);
  if (s.background === "spectrogram" && spec) {  // mel bands (high at the top) in dB, grey levels
    const [B, T] = spec.shape, img = g.createImageData(W, 48);
    for (let y = 0; y < 48; y++) for (let x = 0; x < W; x++) {
      const db = spec.data[Math.floor(y * B / 48) * T + Math.min(T - 1, Math.floor(x * T / W))];
      const v = Math.round(255 * Math.max(0, 1 + db / 80)), p = (y * W + x) * 4;
      img.data[p] = img.data[p + 1] = img.data[p + 2] = v; img.data[p + 3] = 255;
    }
    g.putImageData(img, 0, 2);
  } else {
    g.strokeStyle = "#789";
    const mid = 25;
    for (let x = 0; x < W; x++) { g.beginPath(); g.moveTo(x + 0.5, mid - wave.data[x] * 24); g.lineTo(x + 0.5, mid - wave.data[W + x] * 24); g.stroke(); }
  }
  g.fillStyle = "#aaa"; g.font = "10px sans-serif";
  g.fillText(`${s.background}${m.clip_written ? "" : " (not written yet)"}`, 2, 10);
  if (strips) {
    const [S, La] = strips.shape, pos = Math.max(0, readable(i).indexOf(s.step));
    const row = strips.data.subarray(pos * La, (pos + 1) * La);
    let lo = 0, hi = 1;
    const all = s.norm === "global" ? strips.data : row;
    if (s.norm !== "absolute") { lo = Math.min(...all); hi = Math.max(...all); }
    const v = normalised(row, lo, hi);
    for (let l = 0; l < La; l++) {
      const k = lutIndex(v[l]) * 3;
      g.fillStyle = `rgb(${table[k]},${table[k + 1]},${table[k + 2]})`;
      g.fillRect(Math.floor(l * W / La), 54, Math.ceil(W / La), 30);
    }
    g.fillStyle = "#aaa"; g.fillText(`'${s.tokens[0]}' -> audio, step ${s.step}`, 2, 50);
  }
  ovi.cursorTime = ovi.cursorTime ?? 0;
  const t = playing && playing.mode === "frames" ? ovi.cursorTime : s.frame / m.fps;
  g.strokeStyle = "#0ff"; g.beginPath(); g.moveTo(t / dur * W, 0); g.lineTo(t / dur * W, c.height); g.stroke();
  const sc = $(`sync-${i}`), sg = sc.getContext("2d");
  sg.fillStyle = "#0d0e11"; sg.fillRect(0, 0, sc.width, sc.height);
  if (sync) {
    const [F, La] = sync.shape, v = normalised(sync.data, Math.min(...sync.data), Math.max(...sync.data));
    const rh = (sc.height - 14) / F;
    for (let f = 0; f < F; f++) for (let l = 0; l < La; l++) {
      const k = lutIndex(v[f * La + l]) * 3;
      sg.fillStyle = `rgb(${table[k]},${table[k + 1]},${table[k + 2]})`;
      sg.fillRect(Math.floor(l * sc.width / La), 14 + f * rh, Math.ceil(sc.width / La), Math.ceil(rh));
    }
    const latent = m.latent_frame_of_pixel[s.frame] ?? 0;
    sg.strokeStyle = "#0ff"; sg.strokeRect(0, 14 + latent * rh, sc.width, rh);
    sg.beginPath(); sg.moveTo(t / dur * sc.width, 14); sg.lineTo(t / dur * sc.width, sc.height); sg.stroke();
    sg.fillStyle = "#aaa"; sg.font = "10px sans-serif"; sg.fillText(`sync: latent frames (rows) x audio time, step ${s.step}`, 2, 10);
  } else {
    sg.fillStyle = "#666"; sg.font = "10px sans-serif"; sg.fillText("no sync (fusion) maps in this capture", 2, 10);
  }
}

// ------------------------------------------------------------------ playback
function loadAudio() {
  ovi.files.forEach((m, i) => {
    const el = $(`audio-${i}`);
    if (el && m.has_audio && m.clip_written && !el.getAttribute("src")) el.src = `/api/audio?${query({}, i)}`;
  });
}

let playing = null;
function play(mode) {
  const wasMode = playing && playing.mode;
  stop();
  if (wasMode === mode) return;
  $(`play-${mode}`).classList.add("on");
  $(`play-${mode}`).textContent = "stop";
  playing = { mode, t0: performance.now(), frame0: ovi.state.frame };
  const audio = ovi.files[0].has_audio && $("audio-0").getAttribute("src") ? $("audio-0") : null;
  if (mode === "frames" && audio) {
    audio.currentTime = ovi.state.frame / ovi.files[0].fps;
    audio.play().catch(() => { playing.noAudio = true; });
  }
  const tick = async () => {
    if (!playing || playing.mode !== mode) return;
    const m = ovi.files[0];
    if (mode === "steps") {
      const steps = commonSteps(), pos = steps.indexOf(ovi.state.step);
      await set({ step: steps[(pos + 1) % steps.length] });
      if (playing && playing.mode === mode) playing.timer = setTimeout(tick, 125);
      return;
    }
    const useAudio = audio && !playing.noAudio && !audio.paused;
    const t = useAudio ? audio.currentTime : playing.frame0 / m.fps + (performance.now() - playing.t0) / 1000;
    ovi.cursorTime = t;
    const frame = Math.floor(t * m.fps);
    if (frame >= m.num_pixel_frames || (audio && audio.ended)) { stop(); return; }
    if (frame !== ovi.state.frame) await set({ frame }); else await drawAudio(0, drawTicket);
    if (playing && playing.mode === mode) playing.raf = requestAnimationFrame(tick);
  };
  tick();
}

function stop() {
  if (!playing) return;
  clearTimeout(playing.timer); cancelAnimationFrame(playing.raf);
  const audio = $("audio-0");
  if (audio) audio.pause();
  for (const m of ["steps", "frames"]) { $(`play-${m}`).classList.remove("on"); $(`play-${m}`).textContent = `play ${m}`; }
  playing = null;
}
ovi.play = play; ovi.stop = stop;

// ------------------------------------------------------------------ status of running captures
async function pollStatus() {
  try {
    const r = await fetch(`/api/status${KEY ? `?key=${encodeURIComponent(KEY)}` : ""}`);
    const d = await r.json();
    const before = ovi.status.map((st) => st.steps_done).join(",");
    const wasClip = ovi.files.map((m) => m.clip_written).join(",");
    const last = commonSteps();
    const atEnd = ovi.state.step === last[last.length - 1];
    ovi.status = d.files;
    d.files.forEach((st, i) => { ovi.files[i].clip_written = st.clip_written; });
    $("status").innerHTML = d.files.map((st, i) =>
      `<span class="state-${st.state}">${ovi.files.length > 1 ? escapeHtml(ovi.files[i].name) + ": " : ""}${escapeHtml(st.text)}</span>`).join("");
    const grew = before !== d.files.map((st) => st.steps_done).join(",");
    const clip = wasClip !== ovi.files.map((m) => m.clip_written).join(",");
    if (clip) loadAudio();
    if (grew || clip) {
      answerCache.clear();
      const now = commonSteps();
      if ((atEnd || ovi.state.step === null) && now.length) ovi.state.step = now[now.length - 1];
      syncControls();
      redraw();
    }
    if (d.files.some((st) => st.state === "running")) setTimeout(pollStatus, 1000);
  } catch (e) {
    setTimeout(pollStatus, 3000);
  }
}

// ------------------------------------------------------------------ save this view
// The page's address always names its view (set() keeps it current): the requests'
// parameters, plus what only the page holds (the query panel's query, its file and track
// method, the clicked patch, the audio background). Opening the address restores the view.
function viewAddress() {
  const s = ovi.state, p = new URLSearchParams(query({}, 0));
  p.delete("file");  // every request names its own file; the view names the query's
  p.set("view", "1");  // an address that names a view, even one without tokens
  p.set("background", s.background);
  if (s.query) { p.set("query", s.query); p.set("query_file", s.queryFile); }
  p.set("track", s.track); p.set("show_track", s.showTrack ? "1" : "0");
  if (s.patch) p.set("patch", `${s.patch.file},${s.patch.y},${s.patch.x}`);
  return `${location.pathname}?${p}`;
}

// the state an address names (see viewAddress), checked against the files; what does not fit
// them any more keeps its default and is said in `notes`
function savedState(notes) {
  const p = new URLSearchParams(location.search), m = ovi.files[0], out = {};
  if (p.get("view") !== "1") return out;
  const int = (k) => (/^-?\d+$/.test(p.get(k) ?? "") ? +p.get(k) : null);
  const choice = (k, id = k) => {  // a value one of the page's selects offers
    const v = p.get(k);
    if (v !== null && [...$(id).options].some((o) => o.value === v)) out[id] = v;
  };
  out.tokens = p.getAll("token").filter((t) => m.groups.includes(t)).slice(0, 8);
  const frame = int("frame");
  if (frame !== null && frame >= 0 && frame <= +$("frame").max) out.frame = frame;
  const step = int("step");
  if (step !== null) { if (commonSteps().includes(step)) out.step = step; else notes.push(`step ${step} is not readable here.`); }
  const layers = p.get("layers") || "all", one = /^(\d+)$/.exec(layers), range = /^(\d+)-(\d+)$/.exec(layers);
  if (one && m.layers.includes(+one[1])) Object.assign(out, { layerMode: "one", layer: m.layers.indexOf(+one[1]) });
  else if (range) Object.assign(out, { layerMode: "range", layerLo: +range[1], layerHi: +range[2] });
  choice("heads", "head");
  for (const k of ["branch", "reduce", "norm", "cmap", "background", "track"]) choice(k);
  if (out.branch === "diff") out.tokens = out.tokens.slice(-1);  // as set() keeps it
  const alpha = parseFloat(p.get("alpha"));
  if (alpha >= 0 && alpha <= 1) out.alpha = alpha;
  out.renorm = p.get("renorm") === "1";
  out.showTrack = p.get("show_track") !== "0";
  const qf = int("query_file") ?? 0, label = p.get("query") || "";
  if (qf >= 0 && qf < ovi.files.length) out.queryFile = qf;
  if (label) {
    if (queryTower(label, out.queryFile ?? 0)) out.query = label;
    else notes.push(`the saved query '${label}' is not a query point of ${ovi.files[out.queryFile ?? 0].name}.`);
  }
  const patch = /^(\d+),(\d+),(\d+)$/.exec(p.get("patch") || "");
  if (patch && +patch[1] < ovi.files.length) out.patch = { file: +patch[1], y: +patch[2], x: +patch[3] };
  return out;
}

// writes render's picture of the tokens and, with a query point chosen, the query panel's
// `--view query` picture; shows their commands and the view's address (reopens it exactly)
async function saveView() {
  const s = ovi.state, panel = s.query ? { query: s.query, query_file: s.queryFile } : {};
  try {
    const r = await fetch(`/api/save?${query(panel, 0)}`, { method: "POST" });
    if (!r.ok) throw new Error(await r.text());
    const d = await r.json();
    const link = new URL(viewAddress(), location.href).href;
    const wrote = [d.path, d.query_path].filter((p) => p).map((p) => `wrote ${escapeHtml(p)}; `).join("");
    $("saved").innerHTML = `${wrote}<a id="view-link" href="${escapeHtml(link)}">this view's address</a>`;
    $("command").textContent = [d.command, d.query_command].filter((c) => c).join("\n");
    ovi.lastSave = { ...d, link };
  } catch (e) { message(String(e.message || e)); }
}

async function showCommand() {
  try { $("command").textContent = (await get("/api/command", {}, 0, "json")).command; } catch (e) { /* shown by redraw */ }
}

// ------------------------------------------------------------------ start
async function start() {
  const r = await fetch(`/api/files${KEY ? `?key=${encodeURIComponent(KEY)}` : ""}`);
  const d = await r.json();
  ovi.files = d.files;
  ovi.status = d.files.map((m) => ({ ...m.status, readable_steps: m.readable_steps }));
  const m = ovi.files[0];
  const firstWord = m.groups.find((g, i) => !["eos", "pad"].includes(m.group_kinds[i]));
  const steps = commonSteps();
  ovi.state = {
    tokens: firstWord ? [firstWord] : [], frame: Math.floor(m.num_pixel_frames / 2),
    step: steps.length ? steps[steps.length - 1] : null, layerMode: "all", layer: 0,
    layerLo: m.layers[0], layerHi: m.layers[m.layers.length - 1], reduce: "mean", head: "all",
    branch: m.branches[0], norm: "global", cmap: "inferno", alpha: 0.5, renorm: false, patch: null,
    background: "waveform", query: "", queryFile: 0, track: "soft", showTrack: true,
  };
  buildControls(); buildPrompts(); buildPanels();
  $("frame").max = Math.min(...ovi.files.map((f) => f.num_pixel_frames)) - 1;
  const notes = [];
  Object.assign(ovi.state, savedState(notes));  // an address that names a view: that view
  $("saved").textContent = notes.join(" ");
  history.replaceState(null, "", viewAddress());
  $("grid").addEventListener("click", (e) => {
    if (!ovi.gridCells) return;
    const r = $("grid").getBoundingClientRect(), { S, L, cw, ch } = ovi.gridCells;
    const col = Math.min(S - 1, Math.floor((e.clientX - r.left) / cw)), row = Math.min(L - 1, Math.floor((e.clientY - r.top) / ch));
    set({ step: readable(0)[col], layerMode: "one", layer: row });
  });
  syncControls();
  showCommand();
  await Promise.all([redraw(), pollStatus()]);
}

start().catch((e) => message(String(e.message || e)));
