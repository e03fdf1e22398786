// runsync's status page: reads the sources again every few seconds, draws the charts (Chart.js,
// shipped beside this file) and redraws them every minute. Nothing is loaded from elsewhere.
"use strict";

(function () {
  const body = document.body;
  const refreshMs = Number(body.dataset.refreshSeconds || 15) * 1000;
  const days = Number(body.dataset.days || 30);
  const chartsEveryMs = 60 * 1000;
  const charts = {};

  function showConnection(problem) {
    const note = document.getElementById("connection");
    note.hidden = !problem;
    note.textContent = problem || "";
  }

  async function refreshSources() {
    try {
      const answer = await fetch("status/sources", { cache: "no-store" });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      document.getElementById("sources").innerHTML = await answer.text();
      showConnection(null);
    } catch (error) {
      const when = new Date().toISOString().slice(11, 19);
      showConnection("runsync is not answering (" + error.message + "); tried at " + when + " UTC");
    }
  }

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  const palette = ["#0969da", "#bf8700", "#8250df", "#1a7f37", "#cf222e", "#1b7c83", "#bc4c00", "#6e7781", "#57606a"];

  function draw(id, config) {
    const canvas = document.getElementById(id);
    if (charts[id]) {
      charts[id].data = config.data;
      charts[id].update("none");
    } else {
      config.options = Object.assign({
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { labels: { color: css("--fg"), boxWidth: 12 } } },
      }, config.options || {});
      charts[id] = new Chart(canvas, config);
    }
    canvas.dataset.drawn = "true";
  }

  function axes(stacked, title) {
    const grid = { color: css("--line") };
    const ticks = { color: css("--dim") };
    return {
      x: { stacked: stacked, grid: grid, ticks: ticks },
      y: { stacked: stacked, beginAtZero: true, grid: grid, ticks: ticks,
           title: { display: Boolean(title), text: title, color: css("--dim") } },
    };
  }

  function render(data) {
    const labels = data.labels.map(function (day) { return day.slice(5); });  // MM-DD
    draw("chart-runs", {
      type: "bar",
      data: { labels: labels, datasets: [
        { label: "succeeded", data: data.runs.succeeded, backgroundColor: css("--ok") },
        { label: "failed", data: data.runs.failed, backgroundColor: css("--bad") },
        { label: "open", data: data.runs.open, backgroundColor: css("--dim") },
      ] },
      options: { scales: axes(true, "runs") },
    });
    const actors = Object.keys(data.cost);
    document.getElementById("chart-cost-empty").hidden = actors.length > 0;
    draw("chart-cost", {
      type: "bar",
      data: { labels: labels, datasets: actors.map(function (actor, i) {
        return { label: actor, data: data.cost[actor], backgroundColor: palette[i % palette.length] };
      }) },
      options: { scales: axes(true, "USD") },
    });
    draw("chart-durations", {
      type: "line",
      data: { labels: labels, datasets: [
        { label: "p50", data: data.durations.p50, borderColor: palette[0], backgroundColor: palette[0] },
        { label: "p90", data: data.durations.p90, borderColor: palette[1], backgroundColor: palette[1] },
        { label: "p99", data: data.durations.p99, borderColor: palette[2], backgroundColor: palette[2] },
      ].map(function (set) { return Object.assign({ spanGaps: true, pointRadius: 2, borderWidth: 2 }, set); }) },
      options: { scales: axes(false, "seconds") },
    });
  }

  async function refreshCharts() {
    const problem = document.getElementById("charts-problem");
    try {
      const answer = await fetch("status/charts?days=" + days, { cache: "no-store" });
      const data = await answer.json();
      if (!answer.ok) throw new Error(data.reason || "HTTP " + answer.status);
      render(data);
      problem.hidden = true;
    } catch (error) {
      problem.textContent = "The charts could not be read: " + error.message;
      problem.hidden = false;
    }
  }

  refreshCharts();
  setInterval(refreshSources, refreshMs);
  setInterval(refreshCharts, chartsEveryMs);
})();
