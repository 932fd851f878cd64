// Every server this process starts listens on 127.0.0.1 only.
const net = require("node:net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === "object") {
    args[0] = { ...first, host: "127.0.0.1" };
  } else if (typeof first === "number" || typeof first === "string") {
    const rest = args.slice(1).filter((a) => typeof a !== "string");
    args = [first, "127.0.0.1", ...rest];
  }
  return listen.apply(this, args);
};
