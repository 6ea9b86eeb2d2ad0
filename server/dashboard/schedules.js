// The Schedules section: scheduled functions (`_scheduled_functions`, newest first, live and
// paginated) with their state, a pending one cancellable; and the crons functions/crons.py
// declares, with their next and last runs (live: the scheduler writes them).

import { compact, confirmButton, fill, formatTime, h, showError } from "./dom.js";

const PAGE_SIZE = 25;

/** A cron's schedule as crons.py declared it: {kind: "interval", seconds} or
 * {kind: "cron", expression}. */
function describeSchedule(schedule) {
  if (schedule?.kind === "cron") return `cron ${schedule.expression}`;
  if (schedule?.kind === "interval") {
    const seconds = Number(schedule.seconds);
    const units = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
    const [size, unit] = units.find(([n]) => seconds >= n && seconds % n === 0) ?? [1, "s"];
    return `every ${seconds / size} ${unit}`;
  }
  return compact(schedule);
}

function stateBadge(state) {
  const kind = state?.kind ?? "unknown";
  return h("span", { class: `state state-${kind}`, testid: "job-state", title: state?.error ?? null }, kind);
}

export function mount({ client }, container) {
  const jobs = h("tbody", { testid: "job-rows" });
  const jobsError = h("p", { class: "error", role: "alert", hidden: true, testid: "jobs-error" });
  const more = h("button", { type: "button", class: "secondary", testid: "jobs-more", hidden: true }, "Load more");
  const crons = h("tbody", { testid: "cron-rows" });
  const cronsError = h("p", { class: "error", role: "alert", hidden: true });
  fill(container,
    h("h2", {}, "Scheduled functions"), jobsError,
    h("div", { class: "scroll-x" }, h("table", { class: "docs" },
      h("thead", {}, h("tr", {}, ["Function", "State", "Scheduled for", "Completed", "Arguments"].map((c) => h("th", {}, c)))),
      jobs)),
    h("div", { class: "more" }, more),
    h("h2", {}, "Cron jobs"), cronsError,
    h("div", { class: "scroll-x" }, h("table", { class: "docs" },
      h("thead", {}, h("tr", {}, ["Name", "Schedule", "Function", "Next run", "Last run"].map((c) => h("th", {}, c)))),
      crons)));

  async function cancel(id) {
    try {
      await client.mutation("_system/dashboard:cancel", { id });
    } catch (e) {
      showError(jobsError, e);
    }
  }

  const page = client.onPaginatedUpdate("_system/dashboard:scheduled", {}, { initialNumItems: PAGE_SIZE }, ({ results, status }) => {
    showError(jobsError, null);
    fill(jobs, results.map((job) => h("tr", { testid: "job-row", dataset: { id: job._id, state: job.state?.kind } },
      h("td", {}, h("code", {}, job.name)),
      // The state first and a pending job's Cancel beside it: on a phone the rest scrolls.
      h("td", { class: "state-cell" }, stateBadge(job.state),
        job.state?.kind === "pending"
          ? confirmButton("Cancel", "Really cancel?", () => void cancel(job._id), { testid: "job-cancel" }) : null,
        job.state?.error ? h("div", { class: "error small" }, job.state.error) : null),
      h("td", {}, formatTime(job.scheduledTime)),
      h("td", {}, formatTime(job.completedTime)),
      h("td", { class: "mono" }, compact(job.args?.length === 1 ? job.args[0] : job.args, false)))));
    if (results.length === 0) {
      fill(jobs, h("tr", {}, h("td", { colspan: 5, class: "hint" }, status === "LoadingFirstPage" ? "Loading…" : "None scheduled.")));
    }
    more.hidden = status === "Exhausted";
    more.disabled = status !== "CanLoadMore";
  }, (e) => showError(jobsError, e));
  more.addEventListener("click", () => page.loadMore(PAGE_SIZE));

  const stopCrons = client.onUpdate("_system/dashboard:crons", {}, (list) => {
    showError(cronsError, null);
    fill(crons, list.map((cron) => h("tr", { testid: "cron-row", dataset: { name: cron.name } },
      h("td", {}, cron.name),
      h("td", {}, describeSchedule(cron.schedule)),
      h("td", {}, h("code", {}, cron.function)),
      h("td", {}, cron.nextRun === null ? "—" : formatTime(cron.nextRun)),
      h("td", {}, cron.lastRun ? [formatTime(cron.lastRun.ts), " ", stateBadge(cron.lastRun.state)] : "never"))));
    if (list.length === 0) fill(crons, h("tr", {}, h("td", { colspan: 5, class: "hint" }, "No crons: functions/crons.py declares none.")));
  }, (e) => showError(cronsError, e));

  return () => {
    page.unsubscribe();
    stopCrons();
  };
}
