// Entry point: tabs by URL hash (#chat, #dashboard), then each view sets itself up.
import { setupKeyForm } from "./api.js";
import { loadModels, setupChat } from "./chat.js";
import { setupDashboard } from "./dashboard.js";

function route() {
  const view = location.hash === "#dashboard" ? "dashboard" : "chat";
  for (const name of ["chat", "dashboard"]) {
    document.getElementById(`view-${name}`).hidden = name !== view;
    document.getElementById(`tab-${name}`).classList.toggle("active", name === view);
  }
  if (view === "chat") loadModels().catch(() => {});  // refresh loaded/unloaded labels
  else window.dispatchEvent(new Event("resize"));  // charts drawn while hidden had no width
}

setupKeyForm();
window.addEventListener("hashchange", route);
route();
setupChat();
setupDashboard();
