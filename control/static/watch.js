// The watch page: log in, ask control to play, play the session master with hls.js
// (content steering on), show what is happening, and post playback events.
"use strict";

(function () {
  const main = document.getElementById("watch");
  const title = main.dataset.title;
  const video = document.getElementById("video");
  const overlay = document.getElementById("overlay");
  const message = document.getElementById("message");
  const form = document.getElementById("login");
  // What a test (or a curious viewer in the console) can read.
  const state = (window.streamcdn = {
    title, session: null, pathway: null, pathways: [], fatal: null, errors: [],
    level: null, bandwidth: 0, buffer: 0, stalls: 0, currentTime: 0,
  });

  function say(text, isError) {
    message.textContent = text;
    message.className = isError ? "error" : "";
  }

  async function call(method, url, body, token) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const r = await fetch(url, { method, headers, body: body ? JSON.stringify(body) : undefined });
    let data = {};
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    return { status: r.status, data };
  }

  async function login(email, password) {
    const r = await call("POST", "/sessions", { email, password });
    if (r.status !== 200) throw new Error(r.data.error || "log-in failed (HTTP " + r.status + ")");
    localStorage.setItem("streamcdn-token", r.data.token);
    return r.data.token;
  }

  function askForLogin(why, isError) {
    form.hidden = false;
    say(why, isError);
  }

  // -- playback events, batched to control's /events -----------------------------------
  const pending = [];
  function event(type, fields) {
    if (!state.session) return;
    const e = Object.assign({ type, session: state.session, ts: Date.now() / 1000, title }, fields);
    if (state.pathway) e.appliance = state.pathway;
    if (type !== "start" && !e.appliance) return; // the server needs to know where
    pending.push(e);
  }
  async function flush() {
    if (!pending.length) return;
    const batch = pending.splice(0, pending.length);
    try {
      const r = await fetch("/events", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ events: batch }), keepalive: true,
      });
      if (r.status === 503) pending.unshift(...batch); // not kept: try again
    } catch (e) { pending.unshift(...batch); }
  }
  setInterval(flush, 5000);
  window.addEventListener("pagehide", flush);

  function kbps(hls) {
    const level = hls.levels && hls.levels[hls.currentLevel];
    return level ? Math.round(level.bitrate / 1000) : undefined;
  }

  function play(answer) {
    state.session = answer.session;
    if (!window.Hls || !Hls.isSupported()) {
      say("This browser cannot play HLS with Media Source Extensions.", true);
      return;
    }
    // A forward buffer of 20-30 s, as streaming services keep: enough to ride out a
    // failover, without fetching a whole title a viewer may abandon.
    const hls = new Hls({ enableWorker: true, maxBufferLength: 20, maxMaxBufferLength: 30 });
    window.hls = hls;
    let stalledAt = null;
    hls.on(Hls.Events.MANIFEST_PARSED, () => {
      say("playing (" + answer.source + " placement: " + answer.appliances.join(", ") + ")");
      video.play().catch(() => say("press play to start"));
    });
    hls.on(Hls.Events.LEVEL_SWITCHED, (_, data) => {
      const level = hls.levels[data.level];
      state.level = level ? level.height + "p" : null;
      event("switch", { rendition: state.level || "?", bitrate_kbps: kbps(hls) });
    });
    hls.on(Hls.Events.FRAG_LOADED, (_, data) => {
      const pathway = data.frag && data.frag.level !== undefined && hls.levels[data.frag.level]
        ? hls.levels[data.frag.level].pathwayId : null;
      if (pathway && pathway !== state.pathway) {
        state.pathway = pathway;
        state.pathways.push(pathway);
      }
    });
    hls.on(Hls.Events.ERROR, (_, data) => {
      state.errors.push(data.details);
      if (data.fatal) {
        state.fatal = data.details;
        event("error", { error: String(data.details).slice(0, 200) });
        say("playback failed: " + data.details, true);
      }
    });
    video.addEventListener("playing", () => {
      if (stalledAt !== null) {
        event("stall", { stall_s: (performance.now() - stalledAt) / 1000, bitrate_kbps: kbps(hls) });
        stalledAt = null;
      } else if (!state.started) {
        state.started = true;
        event("start", { bitrate_kbps: kbps(hls) });
      }
    });
    video.addEventListener("waiting", () => {
      if (state.started) { stalledAt = performance.now(); state.stalls += 1; }
    });
    video.addEventListener("ended", () => { event("end", { bitrate_kbps: kbps(hls) }); flush(); });
    hls.loadSource(answer.manifest_url);
    hls.attachMedia(video);
    setInterval(() => {
      const b = video.buffered;
      state.buffer = b.length ? Math.max(0, b.end(b.length - 1) - video.currentTime) : 0;
      state.bandwidth = Math.round((hls.bandwidthEstimate || 0) / 1000);
      state.currentTime = video.currentTime;
      overlay.textContent =
        "rendition  " + (state.level || "-") + " (" + (kbps(hls) || "-") + " kbps)\n" +
        "bandwidth  " + state.bandwidth + " kbps (estimated)\n" +
        "buffer     " + state.buffer.toFixed(1) + " s\n" +
        "pathway    " + (state.pathway || "-") + "   (appliances: " + answer.appliances.join(", ") + ")\n" +
        "stalls     " + state.stalls;
    }, 500);
  }

  async function start(token) {
    const r = await call("POST", "/play/" + encodeURIComponent(title), null, token);
    if (r.status === 401) {
      localStorage.removeItem("streamcdn-token");
      askForLogin("Please log in again to watch.", true);
      return;
    }
    if (r.status !== 200) {
      say(r.data.error || "cannot play this title (HTTP " + r.status + ")", true);
      return;
    }
    form.hidden = true;
    play(r.data);
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    try {
      await start(await login(data.get("email"), data.get("password")));
    } catch (err) {
      askForLogin(err.message, true);
    }
  });

  const token = localStorage.getItem("streamcdn-token");
  if (token) start(token); else askForLogin("Log in to watch (the demo account is filled in).", false);
})();
