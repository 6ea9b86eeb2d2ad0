// A paginated live query: the pages of one `paginate()` query function, each page its own
// subscription, joined into one list — what convex-js's usePaginatedQuery shows, without React.
//
// Page 1 starts at cursor null; `loadMore(n)` subscribes the next page from the last page's
// `continueCursor`. The server keeps each page's end where it was (the page's journal, sent back
// on reconnect: docs/live-queries.md), so inserts and deletes grow or shrink a page and the pages
// keep tiling the range with no gap or overlap. A page the server asks to split (`pageStatus`
// SplitRecommended / SplitRequired with a `splitCursor`), or that grew past twice the first
// page's size, is replaced by its two halves once both have results. A cursor the server no
// longer accepts (errorData `{paginationError: "InvalidCursor"}`) starts the whole list again.

const SPLIT_STATUSES = new Set(["SplitRecommended", "SplitRequired"]);

export class PaginatedQuery {
  /** `client` gives `_addQuery(path, wireArgs) -> queryId`, `_removeQuery(queryId)`,
   * `_resultOf(queryId)`, `_onBatch(hook) -> remove` (hook(changedIds) after each Transition). */
  constructor(client, path, wireArgs, initialNumItems, onResult, onError) {
    if (!Number.isInteger(initialNumItems) || initialNumItems <= 0) {
      throw new TypeError(`initialNumItems must be a positive integer, not ${initialNumItems}`);
    }
    this.client = client;
    this.path = path;
    this.args = wireArgs;
    this.initialNumItems = initialNumItems;
    this.onResult = onResult;
    this.onError = onError;
    this.generation = 0; // in the pages' paginationOpts.id: a reset never reuses old pages
    this.pages = []; // active pages in order: {queryId, cursor}
    this.splits = new Map(); // page being split -> [first half, second half]
    this.results = [];
    this.status = "LoadingFirstPage";
    this.active = true;
    this.removeHook = client._onBatch((ids) => this.changed(ids));
    this.addPage(null, initialNumItems);
    const first = this.pages[0].queryId;
    if (client._resultOf(first) !== undefined) queueMicrotask(() => this.changed(new Set([first]))); // shared, already loaded
  }

  subscribePage(cursor, numItems, endCursor) {
    const opts = { numItems, cursor, id: this.generation };
    if (endCursor !== undefined) opts.endCursor = endCursor;
    return { queryId: this.client._addQuery(this.path, { ...this.args, paginationOpts: opts }), cursor };
  }

  addPage(cursor, numItems) {
    this.pages.push(this.subscribePage(cursor, numItems));
  }

  /** Ask for `numItems` more; false when the last page is still loading or nothing is left. */
  loadMore(numItems) {
    if (!this.active) return false;
    if (!Number.isInteger(numItems) || numItems <= 0) throw new TypeError(`loadMore needs a positive integer, not ${numItems}`);
    const last = this.client._resultOf(this.pages[this.pages.length - 1].queryId);
    if (last === undefined || !last.ok || last.value.isDone) return false;
    this.addPage(last.value.continueCursor, numItems);
    this.publish();
    return true;
  }

  changed(ids) {
    if (!this.active) return;
    const mine = this.allPages().some((page) => ids.has(page.queryId));
    if (!mine) return;
    for (const page of this.allPages()) {
      const result = this.client._resultOf(page.queryId);
      if (result !== undefined && !result.ok && result.errorData?.paginationError === "InvalidCursor") {
        this.reset();
        return;
      }
    }
    this.finishSplits();
    this.startSplits();
    this.publish();
  }

  allPages() {
    return [...this.pages, ...[...this.splits.values()].flat()];
  }

  startSplits() {
    for (const page of this.pages) {
      if (this.splits.has(page)) continue;
      const result = this.client._resultOf(page.queryId);
      if (result === undefined || !result.ok) continue;
      const { splitCursor, pageStatus, continueCursor, page: items } = result.value;
      if (!splitCursor) continue;
      if (SPLIT_STATUSES.has(pageStatus) || items.length > this.initialNumItems * 2) {
        this.splits.set(page, [
          this.subscribePage(page.cursor, this.initialNumItems, splitCursor),
          this.subscribePage(splitCursor, this.initialNumItems, continueCursor),
        ]);
      }
    }
  }

  finishSplits() {
    for (const [page, halves] of this.splits) {
      if (halves.some((half) => this.client._resultOf(half.queryId) === undefined)) continue;
      this.pages.splice(this.pages.indexOf(page), 1, ...halves);
      this.splits.delete(page);
      this.client._removeQuery(page.queryId);
    }
  }

  publish() {
    const results = [];
    let loading = false;
    let done = false;
    for (const page of this.pages) {
      const result = this.client._resultOf(page.queryId);
      if (result === undefined) {
        loading = true;
        continue;
      }
      if (!result.ok) {
        this.onError(result);
        return;
      }
      results.push(...result.value.page);
      done = result.value.isDone;
    }
    this.results = results;
    this.status = loading ? (results.length === 0 ? "LoadingFirstPage" : "LoadingMore") : done ? "Exhausted" : "CanLoadMore";
    this.onResult({ results, status: this.status, loadMore: (n) => this.loadMore(n) });
  }

  /** Start again from the first page (the old cursors are no longer valid). */
  reset() {
    this.dropPages();
    this.generation++;
    this.addPage(null, this.initialNumItems);
    this.publish();
  }

  dropPages() {
    for (const page of this.allPages()) this.client._removeQuery(page.queryId);
    this.pages = [];
    this.splits.clear();
  }

  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.removeHook();
    this.dropPages();
  }
}
