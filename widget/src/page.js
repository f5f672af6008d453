// The host page's side of the widget: the `window.LOACL` function and the events.
//
// A page may call LOACL before the script has loaded, through the usual stub:
//   window.LOACL = window.LOACL || function () { (LOACL.q = LOACL.q || []).push(arguments); };
// The first widget to load replaces the stub with the real function and keeps its queue `q`;
// every widget (each run of the script is one) plays the whole queue when it registers, and
// calls made later go to every widget registered then and into the queue, for widgets still to
// come. A call whose first argument is not a command names a widget: LOACL("<id>", "open").
// Events go to `window` as CustomEvents named "loacl:<name>" and to handlers given to on().

const COMMANDS = ["open", "close", "toggle", "identify", "reset", "setLocale", "send", "on", "off"];
const handlers = {}; // by event name, without "loacl:"
let widgetId;

export const named = (id) => { widgetId = id; };
const bare = (name) => String(name).replace(/^loacl:/, "");

/** Tells the page: a CustomEvent on window and each handler of this widget. */
export function emit(name, detail) {
  detail = { widgetId, ...detail };
  dispatchEvent(new CustomEvent("loacl:" + name, { detail }));
  for (const handler of handlers[name] || []) {
    try {
      handler(detail);
    } catch (error) {
      console.error(error); // the page's handler failed: the others still run
    }
  }
}

function call(commands, id, args) {
  args = [...args];
  if (!COMMANDS.includes(args[0]) && args.shift() !== id) return;
  const command = commands[args[0]];
  command ? command(...args.slice(1)) : console.warn("LOACL: no command " + args[0]);
}

/** Registers this widget's commands and plays the calls queued so far. */
export function register(id, commands) {
  commands.on = (name, handler) => (handlers[bare(name)] = handlers[bare(name)] || new Set()).add(handler);
  commands.off = (name, handler) => handlers[bare(name)]?.delete(handler);
  let api = window.LOACL;
  if (!api?.w) {
    const queue = api?.q || [];
    api = window.LOACL = function () {
      api.q.push(arguments);
      for (const known in api.w) call(api.w[known], known, arguments);
    };
    api.q = queue;
    api.w = {};
    for (const name of COMMANDS) api[name] = (...args) => api(name, ...args);
  }
  api.w[id] = commands;
  for (const args of api.q) call(commands, id, args);
}
