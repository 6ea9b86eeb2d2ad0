import { RippleClient } from "/_ripple/sdk/ripple.js";
export const client = new RippleClient(location.origin);
