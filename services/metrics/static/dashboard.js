// partnerhub KPI dashboard: draws everything client-side from the metrics service's JSON API.
// The ops token lives in sessionStorage (this tab only); `#token=…` in the URL is taken once
// and removed from the address bar. The page works served by the metrics service itself or
// through the gateway (which routes /dashboard/** and /v1/kpis/** to metrics, and
// /admin/services/metrics/consumers to its /admin/consumers).
"use strict";

(function () {
  const TOKEN_KEY = "partnerhub.dashboard.token";
  const REFRESH_SECONDS = 15;
  const KPI_ORDER = [
    "api_availability", "integration_uptime", "integration_success_rate", "time_to_integration_days",
    "time_to_partnership_days", "partner_satisfaction", "partner_retention", "webhook_delivery_success",
  ];
  const TITLES = {
    api_availability: "API availability",
    integration_uptime: "Integration uptime",
    integration_success_rate: "Integration success rate",
    time_to_integration_days: "Time to integration",
    time_to_partnership_days: "Time to partnership",
    partner_satisfaction: "Partner satisfaction",
    partner_retention: "Partner retention",
    webhook_delivery_success: "Webhook delivery success",
  };
  const STATUS_TEXT = { met: "MET", breached: "BREACHED", no_data: "NO DATA" };
  const CONSUMER_PATHS = ["admin/consumers", "admin/services/metrics/consumers"];
  const charts = {};
  let timer = null;
  let consumerPath = null;

  const $ = (id) => document.getElementById(id);

  function takeTokenFromFragment() {
    const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    if (match) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(path) {
    const response = await fetch(path, { headers: { Authorization: "Bearer " + token(), Accept: "application/json" } });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      const error = new Error(response.status + ": " + detail);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  function format(value, unit) {
    if (value === null || value === undefined) return "—";
    if (unit === "percent") return value.toFixed(value >= 99 ? 3 : 1) + " %";
    if (unit === "days") return value.toFixed(1) + " d";
    return value.toFixed(2) + " / 10";
  }

  function targetText(kpi) {
    const comparison = kpi.comparison === ">=" ? "≥" : "≤";
    return "target " + comparison + " " + format(kpi.target, kpi.unit);
  }

  function detailText(name, kpi) {
    const parts = ["n = " + kpi.sample_size];
    if (kpi.median !== undefined && kpi.median !== null) parts.push("median " + kpi.median.toFixed(1) + " d");
    if (kpi.p90 !== undefined && kpi.p90 !== null) parts.push("p90 " + kpi.p90.toFixed(1) + " d");
    if (kpi.error_budget_remaining !== undefined && kpi.error_budget_remaining !== null) {
      parts.push("error budget left " + (100 * kpi.error_budget_remaining).toFixed(1) + " %");
    }
    if (kpi.latency_p50_ms !== undefined && kpi.latency_p50_ms !== null) {
      parts.push("p50 " + kpi.latency_p50_ms.toFixed(0) + " ms, p99 " + kpi.latency_p99_ms.toFixed(0) + " ms");
    }
    if (kpi.breaching && kpi.breaching.length) parts.push(kpi.breaching.length + " below own SLA");
    return parts.join(" · ");
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function loadConsumers() {
    // Direct: /admin/consumers; behind the gateway: /admin/services/metrics/consumers.
    if (consumerPath) return api(consumerPath);
    for (const path of CONSUMER_PATHS) {
      try {
        const doc = await api(path);
        consumerPath = path;
        return doc;
      } catch (error) {
        if (error.status !== 404) throw error;
      }
    }
    return { consumers: [] };
  }

  function renderCards(doc) {
    const cards = $("cards");
    cards.replaceChildren();
    let met = 0, breached = 0, empty = 0;
    for (const name of KPI_ORDER) {
      const kpi = doc.kpis[name];
      if (!kpi) continue;
      if (kpi.status === "met") met++; else if (kpi.status === "breached") breached++; else empty++;
      const card = el("article", { class: "card " + kpi.status, "data-kpi": name, "data-status": kpi.status,
        "data-value": kpi.value === null ? "" : String(kpi.value) });
      const head = el("h3", {}, TITLES[name] + " ");
      head.appendChild(el("span", { class: "badge " + kpi.status }, STATUS_TEXT[kpi.status]));
      card.appendChild(head);
      card.appendChild(el("div", { class: "value" }, format(kpi.value, kpi.unit)));
      card.appendChild(el("div", { class: "target" }, targetText(kpi)));
      card.appendChild(el("div", { class: "detail" }, detailText(name, kpi)));
      cards.appendChild(card);
    }
    $("summary").textContent = met + " met · " + breached + " breached · " + empty + " without data";
  }

  function renderTrends(doc) {
    const box = $("trends");
    for (const name of KPI_ORDER) {
      const series = doc.series[name];
      if (!series) continue;
      const labels = series.points.map((p) => p.day.slice(5));
      const values = series.points.map((p) => p.value);
      const target = series.points.map(() => series.target);
      if (!charts[name]) {
        const wrap = el("div", { class: "trend", "data-kpi": name });
        wrap.appendChild(el("h3", {}, TITLES[name] + " (" + targetText(series) + ")"));
        const holder = el("div", { class: "chart-box" });
        const canvas = el("canvas", { id: "trend-" + name, "aria-label": TITLES[name] + " per day" });
        holder.appendChild(canvas);
        wrap.appendChild(holder);
        box.appendChild(wrap);
        charts[name] = new Chart(canvas, {
          type: "line",
          data: {
            labels: labels,
            datasets: [
              { label: TITLES[name], data: values, borderColor: "#0969da", backgroundColor: "#0969da",
                spanGaps: false, tension: 0.2, pointRadius: 3 },
              { label: "target", data: target, borderColor: "#cf222e", borderDash: [6, 4], pointRadius: 0,
                borderWidth: 1 },
            ],
          },
          options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } },
            scales: { x: { ticks: { maxTicksLimit: 8 } } } },
        });
      } else {
        const chart = charts[name];
        chart.data.labels = labels;
        chart.data.datasets[0].data = values;
        chart.data.datasets[1].data = target;
        chart.update();
      }
    }
  }

  function renderWorst(doc, kpis) {
    const box = $("worst");
    box.replaceChildren();
    for (const name of KPI_ORDER) {
      const rows = doc.kpis[name] || [];
      const unit = kpis[name] ? kpis[name].unit : "percent";
      const wrap = el("div", { class: "worst-box", "data-kpi": name });
      wrap.appendChild(el("h3", {}, TITLES[name]));
      if (!rows.length) {
        wrap.appendChild(el("p", { class: "empty" }, "no partner data in this window"));
      } else {
        const table = el("table", { class: "table" });
        const head = el("tr");
        for (const h of ["partner", "value", "n", "status"]) head.appendChild(el("th", {}, h));
        table.appendChild(head);
        for (const row of rows) {
          const tr = el("tr", { "data-partner": row.partner_id });
          tr.appendChild(el("td", { title: row.partner_id }, row.name || row.partner_id));
          tr.appendChild(el("td", { class: "num" }, format(row.value, unit)));
          tr.appendChild(el("td", { class: "num" }, String(row.sample_size)));
          const status = el("td");
          status.appendChild(el("span", { class: "badge " + row.status }, STATUS_TEXT[row.status] || row.status));
          tr.appendChild(status);
          table.appendChild(tr);
        }
        wrap.appendChild(table);
      }
      box.appendChild(wrap);
    }
  }

  function renderFunnel(doc) {
    const labels = Object.keys(doc.counts);
    const values = labels.map((key) => doc.counts[key]);
    if (!charts.__funnel) {
      charts.__funnel = new Chart($("funnel-chart"), {
        type: "bar",
        data: { labels: labels, datasets: [{ label: "partners", data: values, backgroundColor: "#8250df" }] },
        options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } },
          scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
      });
    } else {
      charts.__funnel.data.labels = labels;
      charts.__funnel.data.datasets[0].data = values;
      charts.__funnel.update();
    }
  }

  function renderConsumers(doc) {
    const body = $("consumers").querySelector("tbody");
    body.replaceChildren();
    for (const consumer of doc.consumers) {
      const lagging = consumer.parked > 0 || consumer.sources.some((s) => s.lag);
      const tr = el("tr", { class: lagging ? "lagging" : "", "data-projection": consumer.projection,
        title: "subscription " + consumer.subscription });
      tr.appendChild(el("td", {}, consumer.projection));
      tr.appendChild(el("td", { class: "num" }, String(consumer.generation)));
      for (const source of consumer.sources) {
        const cell = el("td", { class: "num", "data-source": source.source,
          title: "position " + source.position + " of " + (source.head === null ? "?" : source.head) },
          source.lag === null ? "?" : String(source.lag));
        tr.appendChild(cell);
      }
      tr.appendChild(el("td", { class: "num" }, String(consumer.parked)));
      body.appendChild(tr);
    }
  }

  function setStatus(text, isError) {
    const status = $("status");
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  async function refresh() {
    if (!token()) {
      setStatus("Paste an ops access token above (partnerhub client create --ops NAME, then POST /oauth/token).", true);
      return;
    }
    const windowName = $("window").value;
    try {
      const [kpis, series, worst, funnel, consumers] = await Promise.all([
        api("v1/kpis?window=" + encodeURIComponent(windowName)),
        api("v1/kpis/series?days=30"),
        api("v1/kpis/worst?limit=5&window=" + encodeURIComponent(windowName)),
        api("v1/kpis/funnel"),
        loadConsumers(),
      ]);
      renderCards(kpis);
      renderTrends(series);
      renderWorst(worst, kpis.kpis);
      renderFunnel(funnel);
      renderConsumers(consumers);
      $("as-of").textContent = "as of positions " + JSON.stringify(kpis.as_of);
      document.body.setAttribute("data-loaded", String(Date.now()));
      setStatus("Updated " + new Date().toLocaleTimeString() + " · window " + windowName, false);
    } catch (error) {
      const hint = error.status === 401 ? " (token missing, expired or not trusted)" :
        error.status === 403 ? " (this token is not an ops token)" : "";
      setStatus("Could not load KPIs: " + error.message + hint, true);
    }
  }

  function schedule() {
    if (timer) clearInterval(timer);
    timer = $("auto").checked ? setInterval(refresh, REFRESH_SECONDS * 1000) : null;
  }

  document.addEventListener("DOMContentLoaded", () => {
    takeTokenFromFragment();
    $("interval").textContent = String(REFRESH_SECONDS);
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim().replace(/^Bearer\s+/i, "");
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      refresh();
    });
    $("forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); refresh(); });
    $("window").addEventListener("change", refresh);
    $("refresh").addEventListener("click", refresh);
    $("auto").addEventListener("change", schedule);
    refresh();
    schedule();
  });
})();
