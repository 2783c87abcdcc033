// udstrace's HTML report: draws the flame graph, memory over time and the leak view from the
// report data in #udstrace-data. Hand-written, no dependencies, nothing fetched.
'use strict';
(function () {
  const D = JSON.parse(document.getElementById('udstrace-data').textContent);
  const $ = (s) => document.querySelector(s);
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
  const num = (n) => Number(n).toLocaleString('en-US');
  const bytes = (n) => {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0, v = n;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(v < 10 ? 2 : 1) : String(v)) + ' ' + u[i];
  };
  const WEIGHTS = { bytes: 'b', count: 'c', held: 'o', peak: 'pk' };
  const WNAME = { bytes: 'bytes allocated', count: 'allocations', held: 'bytes held at the end', peak: 'bytes held at the peak' };
  const fmtW = (w, v) => (w === 'count' ? num(v) : bytes(v) + (v >= 1024 ? ' (' + num(v) + ' B)' : ''));
  const site = new Map(D.sites.map((s) => [s.i, s]));
  const highlight = new Set(D.highlight);
  const state = { weight: 'bytes', proc: -1, kinds: { heap: true, mmap: true, brk: true, file: D.file_maps }, zoom: null, search: '', tab: 'flame' };

  // Header.
  $('#title').textContent = D.title;
  const meta = [D.mode + ' mode', D.start, D.duration_seconds.toFixed(3) + ' s', num(D.sites.length) + ' call sites', 'lost events: ' + num(D.lost_events)];
  $('#meta').innerHTML = esc(meta.filter(Boolean).join(' · ')) + D.warnings.map((w) => '<div class="warn">' + esc(w) + '</div>').join('');
  const procName = (i) => { const p = D.procs[i]; return (p.comm || '?') + ' (' + (p.pid || 'folded') + (p.role ? ', ' + p.role : '') + ')'; };
  $('#proc').innerHTML = '<option value="-1">all processes</option>' + D.procs.map((p, i) => '<option value="' + i + '">' + esc(procName(i)) + '</option>').join('');
  $('#k-file').checked = D.file_maps;

  // The flame graph's tree: root, a process level when several are shown, then frames outermost
  // first. Each node carries all four weights, so switching weights needs no rebuild.
  let root = null, uid = 0;
  const shown = (s) => state.kinds[s.cl] && (state.proc < 0 || s.p === state.proc);
  function node(name, mod, loc, parent) {
    return { id: uid++, name, mod, loc, parent, kids: new Map(), b: 0, c: 0, o: 0, pk: 0, hb: 0, hc: 0, ho: 0, hpk: 0, depth: parent ? parent.depth + 1 : 0 };
  }
  function add(n, s) {
    n.b += s.b; n.c += s.c; n.o += s.o; n.pk += s.pk;
    if (highlight.has(s.i)) { n.hb += s.b; n.hc += s.c; n.ho += s.o; n.hpk += s.pk; }
  }
  function build() {
    uid = 0;
    root = node('all', -1, '', null);
    const byProc = state.proc < 0 && D.procs.length > 1;
    for (const s of D.sites) {
      if (!shown(s)) continue;
      let n = root;
      add(n, s);
      const keys = (byProc ? ['p' + s.p] : []).concat(s.s.length ? s.s : ['none']);
      for (const k of keys) {
        let c = n.kids.get(k);
        if (!c) {
          if (k === 'none') c = node('(no stack)', -1, '', n);
          else if (typeof k === 'string') c = node(procName(s.p), -1, '', n);
          else { const f = D.frames[k]; c = node(f[0] || '?', f[1], f[2], n); }
          n.kids.set(k, c);
        }
        add(c, s);
        n = c;
      }
    }
    state.zoom = null;
  }

  // Drawing: the zoomed node and its ancestors span the width, its descendants share it by weight.
  const ROW = 17;
  let drawn = [];
  const matches = (n) => {
    const q = state.search;
    if (!q || n === root) return false;
    if (q.length > 2 && q[0] === '/' && q[q.length - 1] === '/') {
      try { return new RegExp(q.slice(1, -1)).test(n.name); } catch (e) { return false; }
    }
    return n.name.toLowerCase().includes(q.toLowerCase());
  };
  function color(n) {
    let h = 0;
    const key = n.mod >= 0 ? D.mods[n.mod] : '';
    for (let i = 0; i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) >>> 0;
    let l = 0;
    for (let i = 0; i < n.name.length; i++) l = (l * 17 + n.name.charCodeAt(i)) >>> 0;
    if (n.mod < 0) return 'hsl(0,0%,' + (n === root ? 80 : 70) + '%)';
    return 'hsl(' + (10 + (h % 50)) + ',' + (65 + (l % 25)) + '%,' + (55 + (l % 15)) + '%)';
  }
  function renderFlame() {
    const svg = $('#flame');
    const W = svg.clientWidth || 1200;
    const w = WEIGHTS[state.weight];
    const z = state.zoom || root;
    drawn = [];
    const chain = [];
    for (let a = z; a; a = a.parent) chain.unshift(a);
    for (const a of chain) drawn.push({ n: a, x: 0, w: W, anc: a !== z });
    let maxDepth = z.depth;
    const walk = (n, x, scale) => {
      const kids = [...n.kids.values()].filter((k) => k[w] > 0).sort((a, b) => b[w] - a[w] || (a.name < b.name ? -1 : 1));
      let cx = x;
      for (const k of kids) {
        const kw = k[w] * scale;
        if (kw >= 0.5) {
          drawn.push({ n: k, x: cx, w: kw, anc: false });
          maxDepth = Math.max(maxDepth, k.depth);
          walk(k, cx, scale);
        }
        cx += kw;
      }
    };
    if (z[w] > 0) walk(z, 0, W / z[w]);
    const out = [];
    let matched = 0;
    const hw = 'h' + w;
    drawn.forEach((d, i) => {
      const n = d.n;
      const cls = [d.anc ? 'anc' : '', matches(n) ? 'match' : '', n[w] > 0 && n[hw] === n[w] && n !== root ? 'hl' : ''].join(' ').trim();
      const y = n.depth * ROW;
      const chars = Math.floor((d.w - 6) / 6.6);
      const label = chars >= 3 ? (n.name.length > chars ? n.name.slice(0, chars - 1) + '…' : n.name) : '';
      out.push('<g data-i="' + i + '" data-id="' + n.id + '" data-name="' + esc(n.name) + '"' + (cls ? ' class="' + cls + '"' : '') +
        '><rect x="' + d.x.toFixed(2) + '" y="' + y + '" width="' + d.w.toFixed(2) + '" height="' + (ROW - 1) + '" fill="' + color(n) + '"/>' +
        (label ? '<text x="' + (d.x + 3).toFixed(2) + '" y="' + (y + ROW - 5) + '">' + esc(label) + '</text>' : '') + '</g>');
    });
    svg.setAttribute('height', (maxDepth + 1) * ROW + 4);
    svg.innerHTML = out.join('');
    // Search: the matched share of the zoomed node, each match counted once (not again under a match).
    if (state.search) {
      const sum = (n) => { if (matches(n)) return n[w]; let s = 0; for (const k of n.kids.values()) s += sum(k); return s; };
      matched = sum(z);
      const pct = z[w] ? (100 * matched / z[w]) : 0;
      const r = $('#search-result');
      r.textContent = 'matched ' + fmtW(state.weight, matched) + ' of ' + fmtW(state.weight, z[w]) + ' (' + pct.toFixed(2) + '%)';
      r.dataset.matched = matched;
      r.dataset.total = z[w];
      r.dataset.percent = pct.toFixed(4);
    } else {
      $('#search-result').textContent = '';
      delete $('#search-result').dataset.matched;
    }
    const t = $('#flame-total');
    t.textContent = 'total: ' + fmtW(state.weight, root[w]) + ' ' + WNAME[state.weight];
    t.dataset.total = root[w];
    t.dataset.weight = state.weight;
  }
  const svg = $('#flame');
  svg.addEventListener('click', (e) => {
    const g = e.target.closest('g[data-i]');
    if (!g) return;
    const n = drawn[+g.dataset.i].n;
    state.zoom = n === root ? null : n;
    renderFlame();
  });
  const tip = $('#tip');
  svg.addEventListener('mousemove', (e) => {
    const g = e.target.closest('g[data-i]');
    if (!g) { tip.hidden = true; return; }
    const n = drawn[+g.dataset.i].n;
    const w = WEIGHTS[state.weight];
    const pct = root[w] ? (100 * n[w] / root[w]).toFixed(2) : '0';
    tip.textContent = n.name + '\n' + (n.mod >= 0 && D.mods[n.mod] ? 'module: ' + D.mods[n.mod] + '\n' : '') + (n.loc ? 'source: ' + n.loc + '\n' : '') +
      WNAME[state.weight] + ': ' + pct + '% of all\n' +
      'bytes allocated: ' + fmtW('bytes', n.b) + '\nallocations: ' + num(n.c) + '\nheld at the end: ' + fmtW('held', n.o) + '\nheld at the peak: ' + fmtW('peak', n.pk);
    tip.hidden = false;
    tip.style.left = Math.min(e.clientX + 12, window.innerWidth - 400) + 'px';
    tip.style.top = (e.clientY + 14) + 'px';
  });
  svg.addEventListener('mouseleave', () => { tip.hidden = true; });
  $('#search').addEventListener('input', (e) => { state.search = e.target.value.trim(); renderFlame(); });
  $('#reset').addEventListener('click', () => { state.zoom = null; renderFlame(); });
  $('#weight').addEventListener('change', (e) => { state.weight = e.target.value; renderFlame(); });
  $('#proc').addEventListener('change', (e) => { state.proc = +e.target.value; build(); renderAll(); });
  for (const k of ['heap', 'mmap', 'brk', 'file']) {
    $('#k-' + k).addEventListener('change', (e) => { state.kinds[k] = e.target.checked; build(); renderFlame(); });
  }

  // Memory over time: the chosen process's heap, mapped and total bytes, the peak marked; a click
  // lists the sites held then (at the peak, the exact snapshot; elsewhere the site series).
  const siteName = (id) => { const s = site.get(id); return s ? s.l : '#' + id; };
  const tlOptions = () => D.timeline.map((t, i) => [t, i]).filter(([t]) => state.proc < 0 || D.procs[state.proc].pid === t.pid);
  function renderTimeSelect() {
    const opts = tlOptions();
    $('#tl-proc').innerHTML = opts.map(([t, i]) => '<option value="' + i + '">' + esc((t.comm || '?') + ' (' + t.pid + ')') + '</option>').join('');
    if (opts.length) {
      // The process that held the most first.
      let best = opts[0][1], most = -1;
      for (const [t, i] of opts) { const pk = D.peak.find((p) => p.process === t.process); if (pk && pk.bytes > most) { most = pk.bytes; best = i; } }
      $('#tl-proc').value = best;
    }
  }
  let chartAt = null;
  // The timeline chosen, none when the selection has none (+'' would be 0: another process's).
  const chosenTimeline = () => { const v = $('#tl-proc').value; return v === '' ? null : D.timeline[+v]; };
  function renderChart() {
    const svgc = $('#chart');
    const t = chosenTimeline();
    if (!t) { svgc.innerHTML = '<text x="20" y="40">no memory held in this selection (count mode tracks no blocks)</text>'; $('#tl-info').textContent = ''; return; }
    const W = svgc.clientWidth || 1200, H = svgc.clientHeight || 320, L = 70, R = 20, T = 20, B = 30;
    const n = t.heap_bytes.length;
    let max = 0, at = 0;
    for (let j = 0; j < n; j++) { const v = t.heap_bytes[j] + t.mmap_bytes[j]; if (v > max) { max = v; at = j; } }
    const X = (j) => L + (n > 1 ? j * (W - L - R) / (n - 1) : 0);
    const Y = (v) => H - B - (max ? v * (H - T - B) / max : 0);
    const line = (f) => { let s = ''; for (let j = 0; j < n; j++) s += X(j).toFixed(1) + ',' + Y(f(j)).toFixed(1) + ' '; return s; };
    const secs = (j) => (j * t.step_ns / 1e9);
    const out = [];
    out.push('<line class="axis" x1="' + L + '" y1="' + (H - B) + '" x2="' + (W - R) + '" y2="' + (H - B) + '"/>');
    out.push('<line class="axis" x1="' + L + '" y1="' + T + '" x2="' + L + '" y2="' + (H - B) + '"/>');
    for (let k = 0; k <= 4; k++) {
      const v = max * k / 4;
      out.push('<text x="4" y="' + (Y(v) + 4).toFixed(1) + '">' + esc(bytes(Math.round(v))) + '</text>');
      const j = (n - 1) * k / 4;
      out.push('<text x="' + X(j).toFixed(1) + '" y="' + (H - 10) + '" text-anchor="' + (k === 0 ? 'start' : k === 4 ? 'end' : 'middle') + '">' + secs(j).toFixed(3) + ' s</text>');
    }
    out.push('<polygon class="total" points="' + X(0) + ',' + Y(0) + ' ' + line((j) => t.heap_bytes[j] + t.mmap_bytes[j]) + X(n - 1) + ',' + Y(0) + '"/>');
    out.push('<polyline class="heap" points="' + line((j) => t.heap_bytes[j]) + '"/>');
    out.push('<polyline class="mmap" points="' + line((j) => t.mmap_bytes[j]) + '"/>');
    out.push('<circle id="tl-peak" class="peak" cx="' + X(at).toFixed(1) + '" cy="' + Y(max).toFixed(1) + '" r="5" data-bytes="' + max + '" data-step="' + at + '"/>');
    const right = X(at) > W / 2; // the label on the side with room
    out.push('<text x="' + (X(at) + (right ? -10 : 10)).toFixed(1) + '" y="' + (Y(max) + 20).toFixed(1) + '" class="label" text-anchor="' + (right ? 'end' : 'start') + '">peak ' + esc(bytes(max)) + ' at ' + secs(at).toFixed(3) + ' s</text>');
    if (chartAt !== null && chartAt < n) out.push('<line class="cursor" x1="' + X(chartAt) + '" y1="' + T + '" x2="' + X(chartAt) + '" y2="' + (H - B) + '"/>');
    out.push('<text x="' + (L + 10) + '" y="14"><tspan fill="#222">■ total</tspan> <tspan fill="#2a6fdb">■ heap</tspan> <tspan fill="#e08a00">■ anonymous mmap</tspan></text>');
    svgc.innerHTML = out.join('');
    $('#tl-info').textContent = n + ' points, ' + (t.step_ns / 1e6).toFixed(3) + ' ms each; peak ' + bytes(max) + ' (' + num(max) + ' B); click the chart for the sites held then';
    $('#tl-info').dataset.peak = max;
    renderAt(t, chartAt === null ? at : chartAt, at);
  }
  function renderAt(t, j, peakAt) {
    let rows, title;
    if (j === peakAt) {
      const pk = D.peak.find((p) => p.process === t.process);
      rows = pk ? pk.sites.map((s) => [s.site, s.bytes, s.count]) : [];
      title = 'At the peak (' + (j * t.step_ns / 1e9).toFixed(3) + ' s): every site holding blocks';
    } else {
      const k = Math.floor(j / 20);
      rows = t.sites.map((s) => [s.site, s.bytes[Math.min(k, s.bytes.length - 1)], null]).filter((r) => r[1] > 0).sort((a, b) => b[1] - a[1]);
      title = 'At ' + (j * t.step_ns / 1e9).toFixed(3) + ' s (sites followed over time, at ' + (t.site_step_ns / 1e6).toFixed(1) + ' ms resolution)';
    }
    $('#tl-at').textContent = title;
    $('#tl-sites').innerHTML = '<tr><th>site</th><th>function</th><th>kind</th><th class="n">held</th><th class="n">blocks</th></tr>' +
      rows.slice(0, 30).map((r) => { const s = site.get(r[0]) || {}; return '<tr data-site="' + r[0] + '"><td>#' + r[0] + '</td><td class="fn">' + esc(siteName(r[0])) + '</td><td>' + esc(s.k || '') + '</td><td class="n">' + esc(bytes(r[1])) + '</td><td class="n">' + (r[2] === null ? '' : num(r[2])) + '</td></tr>'; }).join('');
  }
  $('#tl-proc').addEventListener('change', () => { chartAt = null; renderChart(); });
  $('#chart').addEventListener('click', (e) => {
    const t = chosenTimeline();
    if (!t) return;
    const r = $('#chart').getBoundingClientRect();
    const n = t.heap_bytes.length;
    chartAt = Math.max(0, Math.min(n - 1, Math.round((e.clientX - r.left - 70) * (n - 1) / (r.width - 90))));
    renderChart();
  });

  // Leaks: growing sites by growth, and old flat ones (caches), from the timelines' site series.
  function spark(v) {
    const mx = Math.max(1, ...v), w = 120, h = 18;
    const pts = v.map((x, i) => (v.length > 1 ? i * w / (v.length - 1) : 0).toFixed(1) + ',' + (h - 1 - x * (h - 2) / mx).toFixed(1)).join(' ');
    return '<svg class="spark" width="' + w + '" height="' + h + '"><polyline points="' + pts + '"/></svg>';
  }
  function renderLeaks() {
    const grow = [], flat = [];
    for (const t of D.timeline) {
      if (state.proc >= 0 && D.procs[state.proc].pid !== t.pid) continue;
      for (const s of t.sites) {
        if (s.trend === 'growing') grow.push([t, s]);
        else if (s.trend === 'flat') flat.push([t, s]);
      }
    }
    grow.sort((a, b) => b[1].growth_bytes - a[1].growth_bytes || a[1].site - b[1].site);
    const last = (s) => s.bytes[s.bytes.length - 1];
    flat.sort((a, b) => last(b[1]) - last(a[1]) || a[1].site - b[1].site);
    const row = (t, s, i, extra) => '<tr data-site="' + s.site + '"><td class="n">' + (i + 1) + '</td><td>#' + s.site + '</td><td class="fn">' + esc(siteName(s.site)) +
      '</td><td>' + esc((t.comm || '?') + ' (' + t.pid + ')') + '</td>' + extra + '<td>' + spark(s.bytes) + '</td></tr>';
    $('#leaks-growing').innerHTML = '<tr><th class="n">rank</th><th>site</th><th>function</th><th>process</th><th class="n">growth</th><th class="n">per second</th><th class="n">held at the end</th><th>held over time</th></tr>' +
      (grow.length ? grow.slice(0, 50).map(([t, s], i) => row(t, s, i, '<td class="n">' + esc(bytes(s.growth_bytes)) + '</td><td class="n">' + esc(bytes(Math.round(s.growth_bytes_per_second))) + '/s</td><td class="n">' + esc(bytes(last(s))) + '</td>')).join('') : '<tr><td colspan="8">no site grew steadily</td></tr>');
    $('#leaks-flat').innerHTML = '<tr><th class="n">rank</th><th>site</th><th>function</th><th>process</th><th class="n">held</th><th class="n">oldest block</th><th>held over time</th></tr>' +
      (flat.length ? flat.slice(0, 50).map(([t, s], i) => { const x = site.get(s.site) || {}; return row(t, s, i, '<td class="n">' + esc(bytes(last(s))) + '</td><td class="n">' + (x.age ? x.age.toFixed(3) + ' s' : '') + '</td>'); }).join('') : '<tr><td colspan="7">none</td></tr>');
  }

  // The socket-path verdict (the echo experiment), with the stdio client's sources.
  function renderVerdict() {
    const v = D.verdict;
    if (!v.applies) return;
    $('#tab-verdict').hidden = false;
    let h = '<div id="verdict-line" class="verdict ' + (v.holds ? 'holds' : 'fails') + '">' + esc(v.conclusion) + (v.reason ? '<br>' + esc(v.reason) : '') + '</div>';
    h += '<p>' + num(v.syscalls) + ' socket syscalls; ' + num(v.user_allocations) + ' allocations (' + esc(bytes(v.user_bytes)) + ') made inside socket calls.</p>';
    h += '<table><tr><th>pid</th><th>role</th><th>comm</th><th class="n">socket syscalls</th><th class="n">allocations after its first socket call</th><th class="n">bytes</th><th>made by</th></tr>';
    for (const p of v.processes) {
      h += '<tr' + (p.role === 'client-stdio' ? ' class="stdio"' : '') + '><td>' + p.pid + '</td><td>' + esc(p.role) + '</td><td>' + esc(p.comm) + '</td><td class="n">' + num(p.syscalls) + '</td><td class="n">' + num(p.allocations_after_first_socket_call) +
        '</td><td class="n">' + num(p.bytes_after_first_socket_call) + '</td><td class="fn">' + (p.sources || []).map((s) => esc(s.function + (s.entry ? ' via ' + s.entry : '') + ' (#' + s.site + ', ' + bytes(s.bytes) + ')')).join('<br>') + '</td></tr>';
    }
    h += '</table>';
    if (D.highlight.length) h += '<p>The stdio client\'s allocations (its stdio buffers) are outlined in red in the <a href="#" id="to-flame">flame graph</a>.</p>';
    $('#view-verdict').innerHTML = h;
    const a = $('#to-flame');
    if (a) {
      a.addEventListener('click', (e) => {
        e.preventDefault();
        const i = D.procs.findIndex((p) => p.role === 'client-stdio'); // its frames, wide enough to see
        if (i >= 0) { $('#proc').value = i; state.proc = i; build(); renderTimeSelect(); }
        show('flame');
      });
    }
  }

  function show(tab) {
    state.tab = tab;
    for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('on', b.dataset.tab === tab);
    for (const s of document.querySelectorAll('.view')) s.hidden = s.id !== 'view-' + tab;
    if (tab === 'flame') renderFlame();
    if (tab === 'time') renderChart();
    if (tab === 'leaks') renderLeaks();
  }
  for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => show(b.dataset.tab));
  function renderAll() { renderTimeSelect(); chartAt = null; show(state.tab); }
  window.addEventListener('resize', () => show(state.tab));

  build();
  renderVerdict();
  renderTimeSelect();
  // The echo experiment (its processes have roles) opens on its verdict.
  show(D.verdict.applies && D.procs.some((p) => p.role) ? 'verdict' : 'flame');
  document.documentElement.dataset.ready = performance.now().toFixed(1);
})();
