// The status board: the public API only (image states, describe, history, the change stream, the builds and their
// summary), no build step.
"use strict";

(() => {
  const STATUSES = [
    "BUILD_IN_PROGRESS", "BUILD_FAILED", "BUILD_COMPLETE", "DELETE_IN_PROGRESS", "DELETE_FAILED", "DELETE_COMPLETE",
  ];
  const LABELS = {
    BUILD_IN_PROGRESS: "Building",
    BUILD_FAILED: "Failed",
    BUILD_COMPLETE: "Complete",
    DELETE_IN_PROGRESS: "Deleting",
    DELETE_FAILED: "Delete failed",
    DELETE_COMPLETE: "Deleted",
  };
  // Active and failed builds first: what a person opens the board for.
  const ORDER = ["BUILD_IN_PROGRESS", "BUILD_FAILED", "DELETE_FAILED", "DELETE_IN_PROGRESS", "BUILD_COMPLETE",
    "DELETE_COMPLETE"];
  // Rows drawn at once; a larger fleet is narrowed with the search and the filters.
  const MAX_ROWS = 500;
  const HISTORY_PAGES = 5;

  const $ = (id) => document.getElementById(id);
  const state = {
    images: new Map(), // "region/imageId" -> item
    regions: [],
    seq: 0,
    status: "",
    search: "",
    region: "",
    stream: null,
    open: null, // the item whose details are shown
    view: "images", // or "builds"
  };

  // --- the API, with the browser's session when the service asks for one ---------------------------

  class Unauthorized extends Error {}
  let signingIn = null;

  async function api(path, options = {}) {
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const response = await fetch(path, { credentials: "same-origin", ...options });
      if (response.status !== 401) return response;
      await signIn();
    }
    throw new Unauthorized("not signed in");
  }

  async function json(path) {
    const response = await api(path, { headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.message || `${path}: HTTP ${response.status}`);
    return body;
  }

  // 401 -> the token form -> POST /v3/session (the service sets an HttpOnly cookie) -> the caller retries.
  function signIn() {
    if (signingIn) return signingIn;
    signingIn = new Promise((resolve) => {
      const dialog = $("login");
      const form = $("login-form");
      const error = $("login-error");
      error.hidden = true;
      const submit = async (event) => {
        event.preventDefault();
        const token = $("token").value.trim();
        if (!token) return;
        const response = await fetch("/v3/session", {
          method: "POST",
          credentials: "same-origin",
          headers: { Authorization: `Bearer ${token}` },
        });
        if (response.ok) {
          form.removeEventListener("submit", submit);
          $("token").value = "";
          dialog.close();
          resolve();
          return;
        }
        const body = await response.json().catch(() => ({}));
        error.textContent = body.message || `Sign-in refused (HTTP ${response.status}).`;
        error.hidden = false;
      };
      form.addEventListener("submit", submit);
      dialog.addEventListener("cancel", (event) => event.preventDefault()); // nothing to show without a session
      if (!dialog.open) dialog.showModal();
      $("token").focus();
    }).finally(() => {
      signingIn = null;
    });
    return signingIn;
  }

  // --- the model --------------------------------------------------------------------------------------

  const keyOf = (region, imageId) => `${region}/${imageId}`;

  function fromDocument(doc, seq, previous) {
    const status = doc.imageBuildStatus;
    return {
      imageId: doc.imageId,
      region: doc.region,
      imageBuildStatus: status,
      cloudformationStackStatus: doc.cloudformationStackStatus,
      imagebuilderImageStatus: doc.imagebuilderImageStatus,
      version: doc.version,
      creationTime: doc.creationTime || doc.cloudformationStackCreationTime || (previous && previous.creationTime),
      // The stream carries the document, not when its status began: a new status began about now.
      statusSince: previous && previous.imageBuildStatus === status ? previous.statusSince : new Date().toISOString(),
      changeSeq: seq,
    };
  }

  // Regions no reconcile pass has listed yet: their count is unknown, not 0. Asked again until they are listed.
  const UNLISTED_RETRY_MS = 5000;

  async function loadStates() {
    const body = await json("/v3/image-states");
    state.regions = body.regions;
    state.seq = body.changeSeq;
    state.images = new Map(body.images.map((item) => [keyOf(item.region, item.imageId), item]));
    state.unlisted = body.notYetListed || [];
    fillRegions();
    render();
    if (state.unlisted.length) setTimeout(refreshListed, UNLISTED_RETRY_MS);
  }

  async function refreshListed() {
    const body = await json("/v3/image-states").catch(() => null);
    if (!body) return setTimeout(refreshListed, UNLISTED_RETRY_MS);
    state.unlisted = body.notYetListed || [];
    // Images the first listing brought arrive on the change stream; the list answer has them too.
    for (const item of body.images) {
      const key = keyOf(item.region, item.imageId);
      if (!state.images.has(key)) state.images.set(key, item);
    }
    render();
    if (state.unlisted.length) setTimeout(refreshListed, UNLISTED_RETRY_MS);
  }

  // --- the change stream: live, no polling --------------------------------------------------------------

  function setLive(kind, text) {
    $("live").dataset.state = kind;
    $("live-text").textContent = text;
  }

  function follow() {
    if (state.stream) state.stream.close();
    const stream = new EventSource(`/v3/image-changes?lastEventId=${encodeURIComponent(state.seq)}`);
    state.stream = stream;
    stream.addEventListener("open", () => setLive("live", "Live"));
    stream.addEventListener("image", (event) => {
      const doc = JSON.parse(event.data);
      const seq = Number(event.lastEventId);
      const key = keyOf(doc.region, doc.imageId);
      const previous = state.images.get(key);
      if (previous && previous.changeSeq >= seq) return; // already in the list we started from
      if (!state.regions.includes(doc.region)) return;
      state.images.set(key, fromDocument(doc, seq, previous));
      state.seq = Math.max(state.seq, seq);
      changed.add(key);
      scheduleRender();
      scheduleSubscriptions(2000);
      if (state.open && state.open.key === key) showDetails(key, { refresh: true });
    });
    stream.addEventListener("gone", (event) => {
      const doc = JSON.parse(event.data);
      const seq = Number(event.lastEventId);
      const key = keyOf(doc.region, doc.imageId);
      const previous = state.images.get(key);
      if (previous && previous.changeSeq >= seq) return;
      state.images.delete(key);
      state.seq = Math.max(state.seq, seq);
      scheduleRender();
    });
    stream.addEventListener("error", async () => {
      if (stream.readyState === EventSource.CONNECTING) {
        setLive("reconnecting", "Reconnecting…");
        return;
      }
      // Closed for good (an answer that was not a stream: a 401 when the session ended, a 5xx). Ask why with an
      // ordinary request, sign in if that is it, then start again from where the list left off.
      setLive("offline", "Offline");
      try {
        await api("/v3/images/custom?imageStatus=PENDING");
        setTimeout(follow, 2000);
      } catch (error) {
        showProblem(`The change stream stopped: ${error.message}`);
      }
    });
  }

  // --- rendering ----------------------------------------------------------------------------------------

  const changed = new Set();
  let renderPending = false;

  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      render();
    });
  }

  function inRegion(item) {
    return !state.region || item.region === state.region;
  }

  function visible() {
    const needle = state.search.toLowerCase();
    const rank = (item) => {
      const index = ORDER.indexOf(item.imageBuildStatus);
      return index === -1 ? ORDER.length : index;
    };
    return [...state.images.values()]
      .filter((item) => inRegion(item))
      .filter((item) => !state.status || item.imageBuildStatus === state.status)
      .filter((item) => !needle || item.imageId.toLowerCase().includes(needle))
      .sort((a, b) => rank(a) - rank(b) || a.imageId.localeCompare(b.imageId) || a.region.localeCompare(b.region));
  }

  function renderCounts() {
    const counts = Object.fromEntries(STATUSES.map((status) => [status, 0]));
    let total = 0;
    for (const item of state.images.values()) {
      if (!inRegion(item)) continue;
      total += 1;
      if (item.imageBuildStatus in counts) counts[item.imageBuildStatus] += 1;
    }
    const nav = $("counts");
    const buttons = [["", "All images", total], ...STATUSES.map((status) => [status, LABELS[status], counts[status]])];
    if (nav.children.length !== buttons.length) {
      nav.replaceChildren(...buttons.map(([status]) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "count";
        button.dataset.status = status;
        button.innerHTML = '<span class="n"></span><span class="label"></span>';
        button.addEventListener("click", () => setStatus(state.status === status ? "" : status));
        return button;
      }));
    }
    buttons.forEach(([status, label, count], index) => {
      const button = nav.children[index];
      button.querySelector(".n").textContent = String(count);
      button.querySelector(".label").textContent = label;
      button.setAttribute("aria-pressed", String(state.status === status));
      button.setAttribute("aria-label", `${label}: ${count}`);
    });
  }

  function badge(status) {
    const span = document.createElement("span");
    span.className = `badge ${status || ""}`;
    span.textContent = LABELS[status] || status || "unknown";
    return span;
  }

  function cell(row, className, text) {
    const td = row.insertCell();
    if (className) td.className = className;
    if (text !== undefined) td.textContent = text;
    return td;
  }

  function renderRow(item, key) {
    const row = document.createElement("tr");
    row.dataset.key = key;
    row.dataset.status = item.imageBuildStatus || "";
    const name = cell(row, "");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "image-link";
    button.textContent = item.imageId;
    button.addEventListener("click", () => showDetails(key));
    name.append(button);
    const status = cell(row, "build-status");
    status.append(badge(item.imageBuildStatus));
    if (item.statusSince) {
      const since = document.createElement("span");
      since.className = "since";
      since.dataset.since = item.statusSince;
      since.textContent = `for ${age(item.statusSince)}`;
      status.append(since);
    }
    cell(row, "col-stack mono", item.cloudformationStackStatus || "—");
    cell(row, "col-ib mono", item.imagebuilderImageStatus || "—");
    cell(row, "col-version", item.version || "—");
    const created = cell(row, "col-age");
    created.dataset.since = item.creationTime || "";
    created.textContent = item.creationTime ? age(item.creationTime) : "—";
    if (item.creationTime) created.title = item.creationTime;
    cell(row, "col-region", item.region);
    if (changed.has(key)) row.classList.add("changed");
    return row;
  }

  function render() {
    renderCounts();
    const items = visible();
    const shown = items.slice(0, MAX_ROWS);
    $("rows").replaceChildren(...shown.map((item) => renderRow(item, keyOf(item.region, item.imageId))));
    changed.clear();
    const total = [...state.images.values()].filter(inRegion).length;
    const unlisted = (state.unlisted || []).filter((region) => inRegion({ region }));
    const counted = items.length > shown.length
      ? `Showing ${shown.length} of ${items.length} matching images (${total} in all): search to narrow.`
      : `${items.length} of ${total} images.`;
    const pending = unlisted.length ? `${unlisted.join(", ")}: not yet listed.` : "";
    // A region not yet listed has no count to give: "0 images" would present an unknown fleet as empty.
    $("summary").textContent = unlisted.length && total === 0 ? pending : [counted, pending].filter(Boolean).join(" ");
    $("empty").hidden = items.length > 0 || unlisted.length > 0;
  }

  function fillRegions() {
    const select = $("region");
    select.replaceChildren(new Option("All regions", ""), ...state.regions.map((region) => new Option(region, region)));
    $("region-label").hidden = state.regions.length < 2;
    document.body.classList.toggle("one-region", state.regions.length < 2);
    fillBuildsRegions();
  }

  function setStatus(status) {
    state.status = status;
    $("status").value = status;
    render();
  }

  // --- time -----------------------------------------------------------------------------------------------

  function age(iso) {
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 60) return `${Math.floor(seconds)}s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes}m`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return `${hours}h ${minutes % 60}m`;
    return `${Math.floor(hours / 24)}d ${hours % 24}h`;
  }

  function refreshAges() {
    for (const element of document.querySelectorAll("[data-since]")) {
      if (!element.dataset.since) continue;
      const text = age(element.dataset.since);
      element.textContent = element.classList.contains("since") ? `for ${text}` : text;
    }
  }

  // --- details: the describe document and the history as a timeline ---------------------------------------

  async function history(item) {
    const transitions = [];
    let token = null;
    for (let page = 0; page < HISTORY_PAGES; page += 1) {
      const query = new URLSearchParams({ region: item.region, limit: "1000" });
      if (token) query.set("nextToken", token);
      const body = await json(`/v3/images/custom/${encodeURIComponent(item.imageId)}/history?${query}`);
      transitions.push(...body.transitions);
      token = body.nextToken;
      if (!token) break;
    }
    return transitions;
  }

  async function showDetails(key, { refresh = false } = {}) {
    const item = state.images.get(key);
    if (!item) return;
    const dialog = $("details");
    state.open = { key };
    $("details-title").textContent = item.imageId;
    const badges = $("details-badges");
    const plain = (text) => {
      const span = document.createElement("span");
      span.className = "plain";
      span.textContent = text;
      return span;
    };
    badges.replaceChildren(
      badge(item.imageBuildStatus),
      plain(item.region),
      ...(item.version ? [plain(`ParallelCluster ${item.version}`)] : []),
      ...(item.creationTime ? [plain(`created ${item.creationTime}`)] : []),
    );
    if (!refresh) {
      $("document").textContent = "Loading…";
      $("timeline").replaceChildren();
      if (!dialog.open) dialog.showModal();
      $("details-close").focus();
    }
    try {
      const path = `/v3/images/custom/${encodeURIComponent(item.imageId)}?region=${encodeURIComponent(item.region)}`;
      const [doc, transitions] = await Promise.all([json(path), history(item)]);
      if (!state.open || state.open.key !== key) return;
      $("document").textContent = JSON.stringify(doc, null, 2);
      showEvidence(doc, item);
      $("timeline").replaceChildren(timeline(transitions, item));
      $("transitions").replaceChildren(transitionTable(transitions));
    } catch (error) {
      $("document").textContent = error.message;
    }
  }

  async function showEvidence(doc, item) {
    const section = $("evidence");
    section.hidden = doc.imageBuildStatus !== "BUILD_FAILED";
    if (section.hidden) return;
    const reason = doc.cloudformationStackStatusReason || doc.imagebuilderImageStatusReason || "";
    const body = $("evidence-body");
    body.replaceChildren(block("note", "Loading…"));
    try {
      body.replaceChildren(await evidence(item.imageId, item.region, reason));
    } catch (error) {
      body.replaceChildren(block("note", error.message));
    }
  }

  const LANES = [
    ["Build", "imageBuildStatus"],
    ["Stack", "cloudformationStackStatus"],
    ["Image Builder", "imagebuilderImageStatus"],
    ["AMI", "ec2AmiState"],
  ];

  function tone(value) {
    if (!value) return "other";
    if (value === "BUILD_COMPLETE" || value === "AVAILABLE") return "complete";
    if (value === "DELETE_COMPLETE" || value === "DELETED" || value === "DEREGISTERED") return "deleted";
    if (/FAILED|ROLLBACK|CANCELLED/.test(value)) return "failed";
    if (/^DELETE/.test(value)) return "deleting";
    if (/COMPLETE$/.test(value)) return "complete";
    if (/IN_PROGRESS|BUILDING|TESTING|DISTRIBUTING|INTEGRATING|PENDING|CREATING/.test(value)) return "progress";
    return "other";
  }

  function svg(name, attributes = {}, text) {
    const element = document.createElementNS("http://www.w3.org/2000/svg", name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function clock(ms, withDate) {
    const iso = new Date(ms).toISOString();
    return withDate ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 19);
  }

  // One lane per status kind, one bar per phase: a phase lasts from its transition to the lane's next one.
  function timeline(transitions, item) {
    if (!transitions.length) {
      const empty = document.createElement("p");
      empty.textContent = "No transitions recorded.";
      return empty;
    }
    const times = transitions.map((t) => Date.parse(t.time));
    const start = Math.min(...times);
    const last = Math.max(...times);
    const building = item.imageBuildStatus && item.imageBuildStatus.endsWith("IN_PROGRESS");
    // A phase still going on runs to now; a finished build's last phase gets a short open end.
    const end = building ? Math.max(Date.now(), last + 1000) : last + Math.max((last - start) * 0.15, 60000);
    const lanes = LANES.filter(([, field]) => transitions.some((t) => t[field]));
    const width = 900;
    const left = 110;
    const laneHeight = 30;
    const top = 8;
    const height = top + lanes.length * laneHeight + 30;
    const x = (ms) => left + ((ms - start) / Math.max(end - start, 1)) * (width - left - 10);
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `Timeline of ${item.imageId}: ${transitions.length} transitions from ${new Date(start).toISOString()}`,
    });
    const withDate = end - start > 86400000;
    for (let index = 0; index <= 4; index += 1) {
      const ms = start + ((end - start) * index) / 4;
      root.append(svg("line", { class: "tick", x1: x(ms), x2: x(ms), y1: top, y2: height - 22 }));
      root.append(svg("text", {
        class: "axis", x: x(ms), y: height - 8, "text-anchor": index === 0 ? "start" : index === 4 ? "end" : "middle",
      }, clock(ms, withDate)));
    }
    lanes.forEach(([label, field], laneIndex) => {
      const y = top + laneIndex * laneHeight;
      root.append(svg("text", { class: "lane-label", x: 0, y: y + laneHeight / 2 + 4 }, label));
      const phases = [];
      transitions.forEach((transition, index) => {
        const value = transition.gone ? undefined : transition[field];
        const current = phases[phases.length - 1];
        if (current && current.value === value) return;
        if (current) current.to = times[index];
        phases.push({ value, from: times[index], to: null });
      });
      for (const phase of phases) {
        if (!phase.value) continue;
        const openEnd = phase.to === null;
        const to = openEnd ? end : phase.to;
        const barX = x(phase.from);
        const barWidth = Math.max(x(to) - barX, 2);
        const group = svg("g");
        group.append(svg("title", {}, `${label}: ${phase.value}\n${new Date(phase.from).toISOString()} → ${
          openEnd ? (building ? "now" : "…") : new Date(to).toISOString()}`));
        group.append(svg("rect", {
          class: `${tone(phase.value)}${openEnd ? " open-end" : ""}`, x: barX, y: y + 4, width: barWidth,
          height: laneHeight - 8, rx: 3,
        }));
        if (barWidth > phase.value.length * 6.2 + 8) {
          group.append(svg("text", { class: "bar-label", x: barX + 5, y: y + laneHeight / 2 + 4 }, phase.value));
        }
        root.append(group);
      }
    });
    return root;
  }

  function transitionTable(transitions) {
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const title of ["Time", "Source", ...LANES.map(([label]) => label)]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = title;
      head.append(th);
    }
    const body = table.createTBody();
    for (const transition of transitions) {
      const row = body.insertRow();
      for (const value of [transition.time, transition.source, ...LANES.map(([, field]) => transition[field])]) {
        row.insertCell().textContent = transition.gone && value === undefined ? "gone" : value || "—";
      }
    }
    return table;
  }

  // --- the Builds view: builds of a window as units (/v3/image-builds and its summary) ----------------------

  const WINDOWS = { "24h": 86400000, "7d": 7 * 86400000, "30d": 30 * 86400000, "90d": 90 * 86400000 };
  const WINDOW_WORDS = { "24h": "the last 24 hours", "7d": "the last 7 days", "30d": "the last 30 days",
    "90d": "the last 90 days" };
  const BUILDS_PAGE = 1000;
  // Builds fetched for the chart and the failed builds at most; the summary's tables count them all.
  const MAX_BUILDS = 5000;
  const MAX_FAILED_ROWS = 200;
  const OUTCOME_LABELS = { complete: "Complete", failed: "Failed", deleted: "Deleted", in_progress: "In progress" };
  const builds = {
    window: "7d",
    ticket: 0, // the newest load; an older one's answer is dropped
    shown: null, // what is on screen: "region window"
    chart: null, // what the chart was drawn from, to draw it again at another width
  };

  const number = (value) => Number(value || 0).toLocaleString("en");

  function duration(seconds) {
    if (seconds === undefined || seconds === null) return "—";
    const total = Math.round(seconds);
    if (total < 60) return `${total}s`;
    const minutes = Math.floor(total / 60);
    if (minutes < 60) return total % 60 ? `${minutes}m ${total % 60}s` : `${minutes}m`;
    return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, "0")}m`;
  }

  function moment(iso) {
    const ms = Date.parse(iso);
    return Number.isNaN(ms) ? String(iso) : `${new Date(ms).toISOString().slice(0, 16).replace("T", " ")} UTC`;
  }

  function buildsRegion() {
    return state.region || state.regions[0] || "";
  }

  async function allBuilds(query) {
    const found = [];
    let token = null;
    while (found.length < MAX_BUILDS) {
      const page = new URLSearchParams(query);
      page.set("limit", String(Math.min(BUILDS_PAGE, MAX_BUILDS - found.length)));
      if (token) page.set("nextToken", token);
      const body = await json(`/v3/image-builds?${page}`);
      found.push(...body.builds);
      token = body.nextToken;
      if (!token) return { builds: found, capped: false };
    }
    return { builds: found, capped: true };
  }

  async function loadBuilds({ force = false } = {}) {
    const region = buildsRegion();
    const key = `${region} ${builds.window}`;
    if (!force && builds.shown === key) return;
    const ticket = ++builds.ticket;
    const windowName = builds.window;
    const until = Date.now();
    const since = until - WINDOWS[windowName];
    const query = { since: new Date(since).toISOString() };
    if (region) query.region = region;
    $("builds").setAttribute("aria-busy", "true");
    $("builds-summary").textContent = `Loading the builds of ${WINDOW_WORDS[windowName]}…`;
    showBuildsProblem("");
    try {
      const [summary, fetched] = await Promise.all([
        json(`/v3/image-builds/summary?${new URLSearchParams({ ...query, groupBy: "version" })}`),
        // Newest first: when there are more than the cap, the recent ones are those shown.
        allBuilds({ ...query, order: "desc" }),
      ]);
      if (ticket !== builds.ticket) return;
      builds.shown = key;
      renderBuilds({ summary, fetched, since, until, windowName });
    } catch (error) {
      if (ticket !== builds.ticket) return;
      builds.shown = null;
      $("builds-content").hidden = true;
      $("builds-empty").hidden = true;
      $("builds-note").hidden = true;
      $("builds-summary").textContent = "";
      showBuildsProblem(`Could not load the builds: ${error.message}`);
    } finally {
      if (ticket === builds.ticket) $("builds").removeAttribute("aria-busy");
    }
  }

  function showBuildsProblem(text) {
    const problem = $("builds-problem");
    problem.textContent = text;
    problem.hidden = !text;
  }

  function totals(groups) {
    const sum = { builds: 0, complete: 0, failed: 0, deleted: 0, inProgress: 0 };
    for (const group of groups) for (const name of Object.keys(sum)) sum[name] += group[name] || 0;
    return sum;
  }

  function renderBuilds({ summary, fetched, since, until, windowName }) {
    const region = summary.region;
    const all = totals(summary.groups);
    const list = fetched.builds;
    const where = `${WINDOW_WORDS[windowName]} in ${region}`;
    const notes = [];
    if (summary.pastHorizon) notes.push(`History is kept from ${moment(summary.horizon)}: the window starts there.`);
    if (fetched.capped && all.builds > list.length) {
      notes.push(`Showing the first ${number(list.length)} builds (the newest) of ${number(all.builds)}: the chart `
        + "and the failed builds cover those, the tables count them all.");
    }
    $("builds-note").textContent = notes.join(" ");
    $("builds-note").hidden = !notes.length;
    if (!all.builds && !list.length) {
      $("builds-summary").textContent = "";
      $("builds-content").hidden = true;
      $("builds-empty").textContent = `No builds started in ${where}.`;
      $("builds-empty").hidden = false;
      return;
    }
    $("builds-empty").hidden = true;
    const rate = all.complete + all.failed ? ` Success rate ${percent(all.complete / (all.complete + all.failed))}.` : "";
    $("builds-summary").textContent = `${number(all.builds)} builds started in ${where}: ${number(all.complete)} `
      + `complete, ${number(all.failed)} failed, ${number(all.deleted)} deleted, ${number(all.inProgress)} in `
      + `progress.${rate}`;
    const finished = list.filter((build) => (build.outcome === "complete" || build.outcome === "failed")
      && typeof build.durationSeconds === "number");
    $("builds-content").hidden = false; // first, so the chart can be drawn at the width it has
    builds.chart = { finished, since, until, where };
    drawChart();
    renderLegend(finished);
    renderPercentiles(summary.groups);
    renderFailures(summary.failureReasons, list.filter((build) => build.outcome === "failed"));
    renderVersions(summary.groups);
  }

  function drawChart() {
    if (!builds.chart) return;
    const { finished, since, until, where } = builds.chart;
    $("builds-chart").replaceChildren(durationChart(finished, since, until, where));
  }

  function percent(rate) {
    return rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(1).replace(/\.0$/, "")}%`;
  }

  function versionName(key) {
    return key === null || key === undefined || key === "" ? "unknown" : key;
  }

  function block(className, text) {
    const div = document.createElement("div");
    div.className = className;
    div.textContent = text;
    return div;
  }

  function fill(tbody, rows) {
    tbody.replaceChildren(...rows.map((cells) => {
      const row = document.createElement("tr");
      for (const [className, content] of cells) {
        const td = row.insertCell();
        if (className) td.className = className;
        if (content instanceof Node) td.append(content);
        else td.textContent = content;
      }
      return row;
    }));
  }

  // A step between the duration axis' ticks: about four of them up to the longest build.
  function durationStep(longest) {
    const steps = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
    return steps.find((step) => longest / step <= 5) || Math.ceil(longest / 5 / 86400) * 86400;
  }

  // Each finished build as a point: its duration over its start, coloured by outcome.
  function durationChart(finished, since, until, where) {
    if (!finished.length) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = `No build finished in ${where}: nothing to plot yet.`;
      return empty;
    }
    // Drawn at the width it is shown at, so its text keeps its size on a phone.
    const width = Math.max(300, Math.round($("builds-chart").clientWidth || 900));
    const height = width < 600 ? 220 : 280;
    const left = 64;
    const right = 14;
    const top = 12;
    const bottom = 28;
    const longest = Math.max(...finished.map((build) => build.durationSeconds), 1);
    const step = durationStep(longest);
    const ceiling = (Math.floor(longest / step) + 1) * step;
    const x = (ms) => left + (Math.min(Math.max(ms, since), until) - since) / Math.max(until - since, 1)
      * (width - left - right);
    const y = (seconds) => top + (1 - seconds / ceiling) * (height - top - bottom);
    const failed = finished.filter((build) => build.outcome === "failed").length;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `Build durations over their start, ${where}: ${finished.length} finished builds, `
        + `${finished.length - failed} complete and ${failed} failed`,
    });
    for (let seconds = 0; seconds <= ceiling; seconds += step) {
      root.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(seconds), y2: y(seconds) }));
      root.append(svg("text", { class: "axis", x: left - 6, y: y(seconds) + 4, "text-anchor": "end" },
        duration(seconds)));
    }
    // Ticks on whole hours or whole UTC days, at most eight of them.
    const hour = 3600000;
    const most = Math.max(2, Math.min(8, Math.floor((width - left - right) / 90)));
    const tick = [hour, 3 * hour, 6 * hour, 12 * hour, 24 * hour, 48 * hour, 168 * hour, 336 * hour, 720 * hour]
      .find((candidate) => (until - since) / candidate <= most) || 1440 * hour;
    for (let ms = Math.ceil(since / tick) * tick; ms <= until; ms += tick) {
      const iso = new Date(ms).toISOString();
      const edge = x(ms) < left + 30 ? "start" : x(ms) > width - right - 30 ? "end" : "middle";
      root.append(svg("line", { class: "grid", x1: x(ms), x2: x(ms), y1: top, y2: height - bottom }));
      root.append(svg("text", { class: "axis", x: x(ms), y: height - 8, "text-anchor": edge },
        tick < 24 * hour ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(0, 10)));
    }
    // Failed builds drawn last, so none hides under the complete ones.
    const ordered = [...finished].sort((a, b) => (a.outcome === "failed") - (b.outcome === "failed"));
    for (const build of ordered) {
      const group = svg("g");
      const approximate = build.endExact === false;
      group.append(svg("title", {}, `${build.imageId}${build.version ? ` (${build.version})` : ""}: `
        + `${OUTCOME_LABELS[build.outcome]} in ${approximate ? "about " : ""}${duration(build.durationSeconds)}, `
        + `started ${moment(build.startTime)}`));
      group.append(svg("circle", {
        class: `point ${build.outcome}${approximate ? " approximate" : ""}`,
        cx: x(Date.parse(build.startTime)), cy: y(build.durationSeconds), r: 5,
      }));
      root.append(group);
    }
    return root;
  }

  function renderLegend(finished) {
    const legend = $("builds-legend");
    const entries = ["complete", "failed"].map((outcome) => {
      const span = document.createElement("span");
      span.className = "key";
      const swatch = document.createElement("span");
      swatch.className = `swatch ${outcome}`;
      swatch.setAttribute("aria-hidden", "true");
      const count = finished.filter((build) => build.outcome === outcome).length;
      span.append(swatch, `${OUTCOME_LABELS[outcome]}: ${number(count)}`);
      return span;
    });
    const approximate = finished.filter((build) => build.endExact === false).length;
    if (approximate) {
      const span = document.createElement("span");
      span.className = "key";
      const swatch = document.createElement("span");
      swatch.className = "swatch approximate";
      swatch.setAttribute("aria-hidden", "true");
      span.append(swatch, `about (the end seen by reconciliation, not an event): ${number(approximate)}`);
      entries.push(span);
    }
    legend.replaceChildren(...entries);
  }

  function renderPercentiles(groups) {
    fill($("builds-percentiles").tBodies[0], groups.map((group) => {
      const seconds = group.durationSeconds || {};
      return [
        ["", versionName(group.key)],
        ["num", number(group.complete)],
        ["num", duration(seconds.p50)],
        ["num", duration(seconds.p90)],
        ["num", duration(seconds.max)],
      ];
    }));
  }

  function reasonOf(build) {
    return build.imagebuilderImageStatusReason || build.cloudformationStackStatusReason || "—";
  }

  function imageCell(build) {
    const key = keyOf(build.region, build.imageId);
    if (!state.images.has(key)) {
      const span = document.createElement("span");
      span.className = "mono";
      span.textContent = build.imageId;
      return span;
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "image-link";
    button.textContent = build.imageId;
    button.addEventListener("click", () => showDetails(key));
    return button;
  }

  // --- a failed build's evidence: its failed stack events and the last lines of its log -----------------
  // ParallelCluster's own image log operations: live while the stack and log group exist, the evidence kept
  // when the build ended once cleanup has deleted them (X-Cache: ARCHIVE). Read only when asked for.

  const EVIDENCE_LINES = 20;
  const EVIDENCE_STREAMS = 3;
  const EVIDENCE_EVENTS = 10;

  function imageLogsPath(imageId, region, suffix, query = {}) {
    const params = new URLSearchParams({ region, ...query });
    return `/v3/images/custom/${encodeURIComponent(imageId)}/${suffix}?${params}`;
  }

  async function optional(path) {
    const response = await api(path, { headers: { Accept: "application/json" } });
    if (response.status === 404) return null;
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.message || `${path}: HTTP ${response.status}`);
    return {
      body,
      kept: response.headers.get("X-Cache") === "ARCHIVE",
      cut: response.headers.get("X-Evidence-Truncated") === "true",
    };
  }

  async function evidence(imageId, region, reason) {
    const box = document.createElement("div");
    box.className = "evidence";
    if (reason) box.append(block("reason mono", reason));
    const [events, streams] = await Promise.all([
      optional(imageLogsPath(imageId, region, "stackevents")),
      optional(imageLogsPath(imageId, region, "logstreams")),
    ]);
    if (!events && !streams) {
      box.append(block("note", "No stack events or build log: AWS has none now and none were kept."));
      return box;
    }
    if ((events && events.kept) || (streams && streams.kept)) {
      box.append(block("note", "Kept when the build ended: the stack or its log group is gone."));
    }
    const failed = events
      ? events.body.events.filter((event) => /_FAILED$/.test(event.resourceStatus) && event.resourceStatusReason)
      : [];
    if (failed.length) {
      const list = document.createElement("ul");
      list.className = "failed-events";
      for (const event of failed.slice(0, EVIDENCE_EVENTS)) {
        const item = document.createElement("li");
        item.className = "mono";
        item.textContent = `${event.timestamp} ${event.logicalResourceId} ${event.resourceStatus}: `
          + event.resourceStatusReason;
        list.append(item);
      }
      box.append(block("label", "Failed stack events"), list);
    }
    for (const stream of (streams ? streams.body.logStreams : []).slice(0, EVIDENCE_STREAMS)) {
      const name = stream.logStreamName;
      const path = imageLogsPath(imageId, region, `logstreams/${encodeURIComponent(name)}`);
      const tail = await optional(`${path}&limit=${EVIDENCE_LINES}`);
      const pre = document.createElement("pre");
      pre.className = "log";
      pre.tabIndex = 0;
      pre.textContent = tail ? tail.body.events.map((e) => `${e.timestamp} ${e.message}`).join("\n") : "";
      const link = document.createElement("a");
      link.href = `${path}&startFromHead=true`;
      link.textContent = "the whole log";
      const head = block("label", `Last lines of ${name} (`);
      head.append(link, ")");
      box.append(head, pre);
      // The newest lines at hand: a failure is told at the end of its log.
      requestAnimationFrame(() => { pre.scrollTop = pre.scrollHeight; });
      if (tail && tail.cut) box.append(block("note", "The kept log was cut at the per-build bound: its newest lines."));
    }
    return box;
  }

  // The reason itself opens the evidence: the row reads as before, and one click shows why.
  function evidenceDetails(build, reason) {
    const details = document.createElement("details");
    details.className = "evidence-toggle";
    const summary = document.createElement("summary");
    summary.textContent = reason;
    summary.title = "Show the failed stack events and the last lines of the build log";
    if (build.evidenceKept) summary.dataset.kept = "";
    details.append(summary);
    details.addEventListener("toggle", async () => {
      if (!details.open || details.dataset.loaded) return;
      details.dataset.loaded = "1";
      const loading = block("note", "Loading…");
      details.append(loading);
      try {
        loading.replaceWith(await evidence(build.imageId, build.region));
      } catch (error) {
        loading.textContent = error.message;
      }
    });
    return details;
  }

  function renderFailures(reasons, failed) {
    fill($("failure-reasons").tBodies[0], reasons.map((reason) => {
      const text = document.createElement("div");
      text.className = "reason";
      const key = document.createElement("span");
      key.className = "mono";
      key.textContent = reason.reason;
      text.append(key);
      if (reason.example && reason.example !== reason.reason) {
        const example = document.createElement("details");
        const summary = document.createElement("summary");
        summary.textContent = "An example";
        const body = document.createElement("p");
        body.className = "mono";
        body.textContent = reason.example;
        example.append(summary, body);
        text.append(example);
      }
      return [["num", number(reason.count)], ["", text]];
    }));
    $("failure-reasons").hidden = !reasons.length;
    $("failure-reasons-empty").hidden = reasons.length > 0;
    const shown = failed.slice(0, MAX_FAILED_ROWS);
    fill($("failed-builds").tBodies[0], shown.map((build) => [
      ["", imageCell(build)],
      ["", build.version || "—"],
      ["nowrap", moment(build.startTime)],
      ["num", duration(build.durationSeconds)],
      ["", reasonWithEvidence(build)],
    ]));
    $("failed-title").hidden = $("failed-builds").hidden = !failed.length;
    const note = $("failed-builds-note");
    note.textContent = failed.length > shown.length ? `Showing the newest ${shown.length} of ${failed.length}.` : "";
    note.hidden = failed.length <= shown.length;
  }

  function reasonWithEvidence(build) {
    const cell = document.createElement("div");
    cell.className = "reason mono";
    cell.append(evidenceDetails(build, reasonOf(build)));
    return cell;
  }

  function renderVersions(groups) {
    fill($("builds-versions").tBodies[0], groups.map((group) => [
      ["", versionName(group.key)],
      ["num", number(group.builds)],
      ["num", number(group.complete)],
      ["num", number(group.failed)],
      ["num", number(group.deleted)],
      ["num", number(group.inProgress)],
      ["num", percent(group.successRate)],
    ]));
  }

  function fillBuildsRegions() {
    const select = $("builds-region");
    select.replaceChildren(...state.regions.map((region) => new Option(region, region)));
    select.value = buildsRegion();
    $("builds-region-label").hidden = state.regions.length < 2;
  }

  // --- views: #images (the default) and #builds[/window], so a view can be linked to ----------------------

  const ROUTE = /^#builds(?:\/(24h|7d|30d|90d))?$/;

  function routeOf(hash) {
    const match = ROUTE.exec(hash);
    if (match) return { view: "builds", window: match[1] || "7d" };
    if (hash === "" || hash === "#" || hash === "#images") return { view: "images" };
    return null; // another anchor: the view stays
  }

  function route() {
    const next = routeOf(location.hash);
    if (!next) return;
    show(next.view);
    if (next.view === "builds") {
      builds.window = next.window;
      $("builds-window").value = next.window;
      loadBuilds();
    }
  }

  function show(view) {
    const entering = state.view !== view;
    state.view = view;
    $("images-view").hidden = view !== "images";
    $("builds").hidden = view !== "builds";
    for (const name of ["images", "builds"]) {
      const link = $(`view-${name}`);
      if (name === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    const skip = $("skip");
    skip.href = view === "builds" ? "#builds" : "#images";
    skip.textContent = view === "builds" ? "Skip to the builds" : "Skip to the images";
    // Coming back to the builds loads them again: they may have moved on since.
    if (entering && view === "builds") builds.shown = null;
  }

  function go(hash) {
    if (location.hash !== hash) window.history.pushState(null, "", hash);
    route();
  }

  function showProblem(text) {
    const problem = $("problem");
    problem.textContent = text;
    problem.hidden = !text;
  }

  // --- notifications: each subscription's health (GET /v3/subscriptions) --------------------------------------

  let subscriptionsTimer = null;

  // Looked at again shortly after each change (a delivery follows it) and every 30 s (retries, lag growing).
  function scheduleSubscriptions(delay) {
    clearTimeout(subscriptionsTimer);
    subscriptionsTimer = setTimeout(loadSubscriptions, delay);
  }

  async function loadSubscriptions() {
    try {
      const { subscriptions } = await json("/v3/subscriptions");
      renderSubscriptions(subscriptions || []);
    } catch (error) {
      // Not a reason to stop the board: the images are what it is for.
      $("subscriptions").hidden = true;
    }
    scheduleSubscriptions(30000);
  }

  // The state's words, and the badge colour of the build status that means the same to the eye.
  function subscriptionState(item) {
    if (item.disabled) return ["Disabled", "BUILD_FAILED"];
    if (item.attempts) return ["Retrying", "BUILD_IN_PROGRESS"];
    if (item.lagSeconds > 600) return ["Behind", "BUILD_IN_PROGRESS"];
    return ["OK", "BUILD_COMPLETE"];
  }

  const SINKS = { webhook: "Webhook", sns: "SNS", ssm_parameter: "SSM parameter" };

  function renderSubscriptions(items) {
    $("subscriptions").hidden = items.length === 0;
    fill($("subscriptions-table").tBodies[0], items.map((item) => {
      const [label, tone] = subscriptionState(item);
      const badge = document.createElement("span");
      badge.className = `badge ${tone}`;
      badge.textContent = label;
      return [
        ["", item.name], ["", SINKS[item.kind] || item.kind], ["num", duration(item.lagSeconds)],
        ["num", String(item.deadLetters)], ["", badge], ["", item.disabledReason || item.lastError || ""],
      ];
    }));
  }

  // --- start ------------------------------------------------------------------------------------------------

  function wire() {
    const select = $("status");
    for (const status of STATUSES) select.append(new Option(LABELS[status], status));
    select.addEventListener("change", () => setStatus(select.value));
    $("search").addEventListener("input", (event) => {
      state.search = event.target.value.trim();
      render();
    });
    $("region").addEventListener("change", (event) => {
      state.region = event.target.value;
      render();
      fillBuildsRegions();
    });
    $("view-images").addEventListener("click", (event) => {
      event.preventDefault();
      go("#images");
    });
    $("view-builds").addEventListener("click", (event) => {
      event.preventDefault();
      go(builds.window === "7d" ? "#builds" : `#builds/${builds.window}`);
    });
    $("builds-window").addEventListener("change", (event) => {
      const chosen = event.target.value;
      window.history.replaceState(null, "", chosen === "7d" ? "#builds" : `#builds/${chosen}`);
      route();
    });
    $("builds-region").addEventListener("change", (event) => {
      // The board's region: the images' filter follows it.
      state.region = event.target.value;
      $("region").value = state.region;
      render();
      loadBuilds();
    });
    $("builds-filters").addEventListener("submit", (event) => event.preventDefault());
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        if (state.view === "builds" && !$("builds-content").hidden) drawChart();
      }, 150);
    });
    window.addEventListener("hashchange", route);
    window.addEventListener("popstate", route);
    $("filters").addEventListener("submit", (event) => event.preventDefault());
    $("details-close").addEventListener("click", () => $("details").close());
    $("details").addEventListener("close", () => {
      state.open = null;
    });
    document.addEventListener("keydown", (event) => {
      const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement;
      if (event.key === "/" && !typing && !$("details").open && state.view === "images") {
        event.preventDefault();
        $("search").focus();
      }
    });
    setInterval(refreshAges, 30000);
  }

  async function start() {
    wire();
    route();
    try {
      await loadStates();
      follow();
      loadSubscriptions();
    } catch (error) {
      setLive("offline", "Offline");
      showProblem(`Could not load the images: ${error.message}`);
    }
  }

  start();
})();
