// What an API failure means to a listener, in one sentence.

import { ApiError } from "./api.js";

export function describe(error) {
  if (!(error instanceof ApiError)) return "the server could not be reached";
  if (error.status === 401) return "this server needs an API key: enter it at the top of the page";
  if (error.status === 429) return "too many requests for now; try again in a moment";
  return error.detail;
}
